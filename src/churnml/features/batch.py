"""The batch paths: a labelled training table at the spec's dates, and the rows to score at a date."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from churnml.data.tables import ContractTables
from churnml.features.engine import build_features
from churnml.features.inference import infer_feature_set
from churnml.features.sets import FeatureSet
from churnml.labels import build_labels
from churnml.spec import DatasetSpec

__all__ = ["FeatureBuilder", "latest_date", "scoring_rows", "training_table"]


# what computes the features of rows: `build_features` (DuckDB), or the same on Spark (`features.spark`)
FeatureBuilder = Callable[[ContractTables, pd.DataFrame, FeatureSet], pd.DataFrame]


def training_table(
    tables: ContractTables, spec: DatasetSpec, feature_set: FeatureSet | None = None,
    build: FeatureBuilder = build_features,
) -> tuple[pd.DataFrame, FeatureSet]:  # fmt: skip
    """Labelled rows at the spec's observation dates with their features (training path)."""
    labels = build_labels(tables, spec)
    labels = labels[labels["churned"].notna()].reset_index(drop=True)
    if labels.empty:
        raise ValueError("training table: no labelled rows; check observation dates against the data window")
    fs = feature_set or infer_feature_set(tables, spec)
    table = build(tables, labels[["customer_id", "observation_date"]], fs)
    table["churned"] = labels["churned"].astype("int8").to_numpy()
    table["churn_date"] = labels["churn_date"].to_numpy()
    return table, fs


def latest_date(tables: ContractTables) -> pd.Timestamp:
    """The first midnight after the last event, or what the spec says is observed if later: features
    as of it see all the data."""
    window = tables.window
    day = window.observed_until.ceil("D")
    return day if day > window.end else window.end.normalize() + pd.Timedelta(days=1)


def scoring_rows(tables: ContractTables, spec: DatasetSpec, as_of: pd.Timestamp) -> pd.DataFrame:
    """Customers active at ``as_of`` (batch scoring path): the same population rule as the labels."""
    population = build_labels(tables, spec, dates=[pd.Timestamp(as_of).normalize()])
    return population[["customer_id", "observation_date"]].reset_index(drop=True)
