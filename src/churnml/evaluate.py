"""Model evaluation for churn: ranking, calibration and the business view (who to call, what it saves).

Metrics are computed on out-of-time data. Besides ROC-AUC and PR-AUC, a CSM team cares about
probabilities meaning what they say (log loss, Brier, expected calibration error), how concentrated
churners are at the top of the list (lift and capture in the top decile), and how much revenue the
top-K accounts a team can call actually hold (MRR captured at capacity K).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

__all__ = [
    "expected_calibration_error",
    "top_fraction_stats",
    "revenue_captured",
    "churn_metrics",
    "reliability_table",
]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Weighted mean |observed rate - mean predicted| over equal-width probability bins."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs(y[sel].mean() - p[sel].mean())
    return float(total / len(y))


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per probability bin: mean prediction, observed churn rate and count (for the reliability plot)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    frame = (
        pd.DataFrame({"bin": idx, "y": y, "p": p})
        .groupby("bin")
        .agg(predicted=("p", "mean"), observed=("y", "mean"), count=("y", "size"))
    )
    return frame.reset_index()


def _ranked(p: np.ndarray) -> np.ndarray:
    # stable ordering: ties broken by position so results are reproducible
    return np.lexsort((np.arange(len(p)), -np.asarray(p, float)))


def top_fraction_stats(y: np.ndarray, p: np.ndarray, fraction: float = 0.1) -> tuple[float, float]:
    """(lift, capture) in the top ``fraction`` by score: churn rate there / overall, share of churners there."""
    y = np.asarray(y, float)
    k = max(1, int(round(fraction * len(y))))
    top = y[_ranked(p)[:k]]
    base = y.mean()
    lift = float(top.mean() / base) if base > 0 else float("nan")
    capture = float(top.sum() / y.sum()) if y.sum() > 0 else float("nan")
    return lift, capture


def revenue_captured(y: np.ndarray, p: np.ndarray, mrr: np.ndarray, capacity: int) -> float:
    """Share of churned MRR held by the ``capacity`` accounts ranked highest by revenue at risk (p x MRR)."""
    y, mrr = np.asarray(y, float), np.nan_to_num(np.asarray(mrr, float))
    lost = (y * mrr).sum()
    if lost <= 0:
        return float("nan")
    order = _ranked(np.asarray(p, float) * mrr)[: max(1, capacity)]
    return float((y[order] * mrr[order]).sum() / lost)


def churn_metrics(
    y: np.ndarray, p: np.ndarray, mrr: np.ndarray | None = None, capacity: int = 100
) -> dict[str, float]:
    """All headline metrics for one set of predictions."""
    y = np.asarray(y, int)
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    two_classes = len(np.unique(y)) == 2
    lift, capture = top_fraction_stats(y, p, 0.1)
    metrics = {
        "roc_auc": float(roc_auc_score(y, p)) if two_classes else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if two_classes else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "lift_top_decile": lift,
        "capture_top_decile": capture,
        "base_rate": float(y.mean()),
        "n": float(len(y)),
    }
    if mrr is not None:
        metrics[f"revenue_captured_top_{capacity}"] = revenue_captured(y, p, mrr, capacity)
    return metrics
