"""The prediction service: request schemas, model store, predictor, authentication and middleware."""

from __future__ import annotations

from churnml.service.auth import Authenticator, AuthMiddleware, Identity, Lockout
from churnml.service.users import UserStore

__all__ = ["AuthMiddleware", "Authenticator", "Identity", "Lockout", "UserStore"]
