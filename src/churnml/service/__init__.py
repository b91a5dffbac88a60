"""The prediction service: request schemas, model store, predictor, authentication and middleware.

``churnml.service.bento`` wires them into BentoML (``serving/service.py`` re-exports it for `bentoml
build`); it is not imported here because defining a BentoML service reads the service's settings.
"""

from __future__ import annotations

from churnml.service.auth import Authenticator, AuthMiddleware, Identity, Lockout
from churnml.service.model_store import import_registered_model, load_serving_model, packaged_model_ref
from churnml.service.predictor import Predictor, answer
from churnml.service.schemas import (
    MAX_BATCH,
    CustomerIn,
    Customers,
    ExplainResponse,
    ModelInfo,
    PredictResponse,
)
from churnml.service.users import UserStore

__all__ = [
    "MAX_BATCH",
    "AuthMiddleware",
    "Authenticator",
    "CustomerIn",
    "Customers",
    "ExplainResponse",
    "Identity",
    "Lockout",
    "ModelInfo",
    "PredictResponse",
    "Predictor",
    "UserStore",
    "answer",
    "import_registered_model",
    "load_serving_model",
    "packaged_model_ref",
]
