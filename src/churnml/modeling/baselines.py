"""Baselines scored on the same test rows as the model: what churnml must beat to be worth its keep."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churnml.evaluate import churn_metrics
from churnml.features.definitions import column_name, slug
from churnml.features.sets import FeatureSet

__all__ = ["baseline_metrics", "logistic_baseline", "recency_score"]


def recency_score(frame: pd.DataFrame, fs: FeatureSet) -> np.ndarray:
    """Baseline heuristic: days since the account's most recent event of any type (longer = riskier)."""
    cols = [column_name("days_since_last", slug(t)) for t in fs.event_types]
    days = frame[cols].to_numpy(float) if cols else np.zeros((len(frame), 1))
    score = np.nanmin(np.where(np.isnan(days), np.inf, days), axis=1)
    return np.where(np.isinf(score), 1e6, score)


def logistic_baseline(dev: pd.DataFrame, test: pd.DataFrame, fs: FeatureSet) -> np.ndarray:
    """The logistic-regression baseline's test scores: numbers standardised (missing -> development
    median), categories one-hot (levels with 20+ development rows; rarer ones pooled, so an id-like
    text column cannot memorise rows)."""
    numeric = [c for c in fs.columns if c not in fs.categorical_columns]
    medians = dev[numeric].median().fillna(0.0)

    def design(part: pd.DataFrame) -> pd.DataFrame:
        pieces = [part[numeric].astype(float).fillna(medians).clip(-1e9, 1e9)]
        for c in fs.categorical_columns:
            counts = dev[c].value_counts()
            levels = counts[counts >= 20].index
            known = part[c].where(part[c].isin(levels))  # other levels: all-zero, like a missing value
            pieces.append(pd.get_dummies(pd.Categorical(known, categories=levels), prefix=c, dtype=float))
            pieces[-1].index = part.index
        return pd.concat(pieces, axis=1)

    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    lr.fit(design(dev), dev["churned"].to_numpy(int))
    return lr.predict_proba(design(test))[:, 1]


def baseline_metrics(
    dev: pd.DataFrame,
    test: pd.DataFrame,
    fs: FeatureSet,
    capacity: int,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """The base rate, logistic regression, the recency heuristic (behaviour data) and any ``extra``
    scores (name -> test probabilities), each scored like the model on the test rows."""
    y_dev, y_test = dev["churned"].to_numpy(int), test["churned"].to_numpy(int)
    mrr = test["mrr"].to_numpy(float) if "mrr" in test else None
    out = {
        "base_rate": churn_metrics(y_test, np.full(len(y_test), y_dev.mean()), mrr, capacity),
        "logistic_regression": churn_metrics(y_test, logistic_baseline(dev, test, fs), mrr, capacity),
    }
    if not fs.is_snapshot:
        recency = recency_score(test, fs)
        rank = (np.argsort(np.argsort(recency)) + 1) / (
            len(recency) + 1
        )  # rank-scaled: a score, not a probability
        out["recency_heuristic"] = churn_metrics(y_test, rank, mrr, capacity)
    for name, p in (extra or {}).items():
        out[name] = churn_metrics(y_test, p, mrr, capacity)
    return out
