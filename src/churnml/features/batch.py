"""The batch paths: a labelled training table at the spec's dates, and the rows to score at a date."""

from __future__ import annotations

import duckdb
import pandas as pd

from churnml.features.engine import build_features
from churnml.features.inference import infer_feature_set
from churnml.features.sets import FeatureSet
from churnml.labels import build_labels, data_window
from churnml.spec import DatasetSpec

__all__ = ["latest_date", "scoring_rows", "training_table"]


def training_table(
    con: duckdb.DuckDBPyConnection, spec: DatasetSpec, feature_set: FeatureSet | None = None
) -> tuple[pd.DataFrame, FeatureSet]:
    """Labelled rows at the spec's observation dates with their features (training path)."""
    labels = build_labels(con, spec)
    labels = labels[labels["churned"].notna()].reset_index(drop=True)
    if labels.empty:
        raise ValueError("training table: no labelled rows; check observation dates against the data window")
    fs = feature_set or infer_feature_set(con, spec)
    table = build_features(con, labels[["customer_id", "observation_date"]], fs)
    table["churned"] = labels["churned"].astype("int8").to_numpy()
    table["churn_date"] = labels["churn_date"].to_numpy()
    return table, fs


def latest_date(con: duckdb.DuckDBPyConnection) -> pd.Timestamp:
    """The first midnight after the last event: features as of it see all the data."""
    return data_window(con).end.normalize() + pd.Timedelta(days=1)


def scoring_rows(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, as_of: pd.Timestamp) -> pd.DataFrame:
    """Customers active at ``as_of`` (batch scoring path): the same population rule as the labels."""
    population = build_labels(con, spec, dates=[pd.Timestamp(as_of).normalize()])
    return population[["customer_id", "observation_date"]].reset_index(drop=True)
