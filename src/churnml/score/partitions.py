"""Scores and SHAP reasons computed where the features are: here, or inside each customer partition
of the Spark engine (the model travels to the executors in its own files and is checked there on load),
so batch scoring with reasons grows with the cluster, not with the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from churnml.data.tables import ContractTables
from churnml.explain import DEFAULT_PLAYBOOK, AccountReasons, Playbook
from churnml.features.batch import FeatureBuilder
from churnml.features.engine import build_features
from churnml.model import ChurnModel
from churnml.score.rows import RiskPolicy, explain_scored, score_features

if TYPE_CHECKING:
    from churnml.features.spark import PartitionStep

__all__ = ["ScoredRows", "score_and_explain"]


@dataclass
class ScoredRows:
    """Rows with their features, scores and reasons, and how many Spark partitions computed them (0: here)."""

    features: pd.DataFrame
    scored: pd.DataFrame  # score_features' columns, index 0..n-1
    explained: list[AccountReasons]
    partitions: int = 0

    @property
    def parts(self) -> tuple[pd.DataFrame, pd.DataFrame, list[AccountReasons]]:
        return self.features, self.scored, self.explained


_SCORED = {"probability": pa.float64(), "health_score": pa.int64(), "risk_tier": pa.string(),
           "mrr": pa.float64(), "revenue_at_risk": pa.float64()}  # fmt: skip
_EXPLAINED = "_reasons"
_STEP = "_scored_"  # the step's columns beside the features (``mrr`` is both)


def score_and_explain(
    tables: ContractTables, rows: pd.DataFrame, model: ChurnModel, policy: RiskPolicy, k: int,
    playbook: Playbook = DEFAULT_PLAYBOOK, build: FeatureBuilder = build_features,
) -> ScoredRows:  # fmt: skip
    """The features, scores and reasons of ``rows``: here, or with the Spark engine inside each customer
    partition (the model travels to the executors in its own files and is checked there on load), so
    batch scoring with SHAP reasons grows with the cluster, not with the driver."""
    from churnml.features.spark import SparkFeatures  # pyspark itself is imported only when used

    if not isinstance(build, SparkFeatures):
        features = build(tables, rows, model.feature_set)
        scored = score_features(model, features, policy, num_threads=0)
        return ScoredRows(
            features, scored, explain_scored(model, features, scored, k, playbook, num_threads=0)
        )
    done, partitions = build.with_step(
        tables, rows, model.feature_set, _scoring_step(model, policy, k, playbook)
    )
    explained = [AccountReasons.from_json(text) for text in done[_EXPLAINED]]
    step_columns = [f"{_STEP}{c}" for c in _SCORED]
    scored = done[step_columns].set_axis(list(_SCORED), axis=1).astype({"health_score": int})
    return ScoredRows(done.drop(columns=[*step_columns, _EXPLAINED]), scored, explained, partitions)


def _scoring_step(model: ChurnModel, policy: RiskPolicy, k: int, playbook: Playbook) -> PartitionStep:
    """`score_features` and `explain_scored` as each Spark partition runs them on its features."""
    from churnml.features.spark import PartitionStep

    files = model.to_files()

    def run(features: pd.DataFrame) -> pd.DataFrame:
        here = _executor_model(files)
        scored = score_features(here, features, policy)
        explained = explain_scored(here, features, scored, k, playbook)
        out = scored.reset_index(drop=True).add_prefix(_STEP)
        return out.assign(**{_EXPLAINED: [a.to_json() for a in explained]})

    return PartitionStep(
        run, pa.schema([*((f"{_STEP}{c}", t) for c, t in _SCORED.items()), (_EXPLAINED, pa.string())])
    )


_EXECUTOR_MODELS: dict[str, ChurnModel] = {}  # an executor's Python worker loads each model once


def _executor_model(files: dict[str, bytes]) -> ChurnModel:
    import hashlib

    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
    if digest not in _EXECUTOR_MODELS:
        _EXECUTOR_MODELS.clear()
        _EXECUTOR_MODELS[digest] = ChurnModel.from_files(files)
    return _EXECUTOR_MODELS[digest]
