"""Compatibility: the service's logic moved to the :mod:`churnml.service` package."""

from __future__ import annotations

from churnml.service import *  # noqa: F403
from churnml.service import __all__  # noqa: F401
