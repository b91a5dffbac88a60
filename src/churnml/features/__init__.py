"""Point-in-time features: one registry of definitions, one engine for training, batch and online.

- `definitions`: THE registry, every feature family declared once (names, units, sentences, risk);
- `sets`: the `FeatureSet` a model is trained on (light: the model and its pyfunc import only this);
- `catalogue`: every column resolved against the registry, for CSMs and explanations;
- `inference`: which event types, value meanings and attributes the loaded data holds;
- `engine` and `runs`: DuckDB fetches sorted keyed events, NumPy reads the families off them;
- `batch` and `online`: training tables and scoring rows; one customer's raw behaviour.

The engine's names are loaded on first use, so importing this package (as the model does) does not
import DuckDB, Ibis or the engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from churnml.features.definitions import LOOKBACK, TREND, VALUE_WINDOWS, WINDOWS, slug
from churnml.features.sets import DEFINITION_CHANGES, FEATURE_DEFINITION, DefinitionChange, FeatureSet

__all__ = [
    "WINDOWS",
    "VALUE_WINDOWS",
    "TREND",
    "LOOKBACK",
    "FEATURE_DEFINITION",
    "DEFINITION_CHANGES",
    "DefinitionChange",
    "FeatureSet",
    "slug",
    "build_features",
    "features_from_frames",
    "infer_feature_set",
    "latest_date",
    "load_contract_frames",
    "scoring_rows",
    "training_table",
]

_LAZY = {
    "build_features": "engine",
    "features_from_frames": "online",
    "load_contract_frames": "online",
    "infer_feature_set": "inference",
    "latest_date": "batch",
    "scoring_rows": "batch",
    "training_table": "batch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"churnml.features.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'churnml.features' has no attribute {name!r}")
