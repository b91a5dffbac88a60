"""Model evaluation for churn: ranking, calibration and the business view (who to call, what it saves).

Metrics are computed on out-of-time data. Besides ROC-AUC and PR-AUC, a CSM team cares about
probabilities meaning what they say (log loss, Brier, expected calibration error), how concentrated
churners are at the top of the list (lift and capture in the top decile), and how much revenue the
top-K accounts a team can call actually hold (MRR captured at capacity K).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

__all__ = [
    "expected_calibration_error",
    "top_fraction_stats",
    "revenue_captured",
    "churn_metrics",
    "reliability_table",
    "weighted_ranking_metrics",
    "grouped_ranking_metrics",
    "score_groups",
    "bootstrap_intervals",
    "paired_win_share",
    "PROMOTION_METRICS",
    "comparable_metric",
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


def score_groups(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order by descending score, start of each tied-score group in that order, group of each row)."""
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    starts = np.flatnonzero(np.concatenate([[True], ps[1:] != ps[:-1]]))
    group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(ps))))
    return order, starts, group


def weighted_ranking_metrics(
    y: np.ndarray, p: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and PR-AUC (average precision) for each row of ``weights`` (one weight per sample).

    The same figures as scikit-learn's with ``sample_weight`` (ties share a threshold), computed for
    many weightings at once from one sort: a bootstrap resample is a weighting by draw counts.
    """
    y, p = np.asarray(y, float), np.asarray(p, float)
    weights = np.atleast_2d(np.asarray(weights, float))
    order, starts, _ = score_groups(y, p)
    w = weights[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)  # positive weight per tied-score group
    neg = np.add.reduceat(w * (1 - y[order]), starts, axis=1)
    return grouped_ranking_metrics(pos, neg)


def grouped_ranking_metrics(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision from the positive and negative weight of each tied-score group, in
    descending score order (one row per weighting, labelling or bootstrap draw)."""
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        # AUC: each positive beats the negatives ranked below its group and ties half of its own
        below = n_neg[:, None] - fp
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (pos * precision).sum(axis=1) / n_pos  # sum of recall steps x precision
    return auc, ap


BOOTSTRAP_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier")


def _resampled_metrics(
    y: np.ndarray, scores: list[np.ndarray], n_boot: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """BOOTSTRAP_METRICS of each score vector over the same stratified resamples (paired).

    Churners and non-churners are resampled separately, so every resample keeps the churn rate. Large
    test sets get fewer resamples (the work is resamples x rows), and their intervals are narrow anyway.
    """
    y = np.asarray(y, int)
    scores = [np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6) for p in scores]
    n_boot = max(1, min(n_boot, max(200, 20_000_000 // len(y))))
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(y == c) for c in (0, 1)]
    chunk = max(1, min(n_boot, 20_000_000 // len(y)))  # bounds the weight matrix (~160 MB)
    parts: list[dict[str, list[np.ndarray]]] = [{k: [] for k in BOOTSTRAP_METRICS} for _ in scores]
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w = np.zeros((b, len(y)))
        for idx in classes:  # draw counts per row = a resample of that class, same size
            draws = rng.integers(0, len(idx), size=(b, len(idx))) + np.arange(b)[:, None] * len(idx)
            w[:, idx] = np.bincount(draws.ravel(), minlength=b * len(idx)).reshape(b, len(idx))
        for p, out in zip(scores, parts, strict=True):
            auc, ap = weighted_ranking_metrics(y, p, w)
            out["roc_auc"].append(auc)
            out["pr_auc"].append(ap)
            out["log_loss"].append(w @ -(y * np.log(p) + (1 - y) * np.log(1 - p)) / len(y))
            out["brier"].append(w @ (p - y) ** 2 / len(y))
    return [{k: np.concatenate(v) for k, v in out.items()} for out in parts]


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, level: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of ROC-AUC, PR-AUC, log loss and Brier over stratified bootstrap resamples.

    Why: an out-of-time test date often holds only a hundred or two churners, and then PR-AUC moves by
    several hundredths between resamples. An interval tells whether a gap between two models, or to a
    target, is larger than the test set can resolve.
    """
    if len(np.unique(np.asarray(y, int))) < 2 or not 0 < level < 1:
        return {}
    (resampled,) = _resampled_metrics(y, [p], n_boot, seed)
    tail = (1 - level) / 2 * 100
    return {
        k: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for k, v in resampled.items()
    }


def paired_win_share(
    y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, metric: str, n_boot: int = 1000, seed: int = 0
) -> float:
    """Share of paired bootstrap resamples in which ``p_new`` scores better than ``p_old`` on ``metric``.

    Both models are scored on the same resampled rows, so the share reflects the gap between them and
    not the noise both share. NaN for a metric outside BOOTSTRAP_METRICS or a one-class test.
    """
    if metric not in BOOTSTRAP_METRICS or len(np.unique(np.asarray(y, int))) < 2:
        return float("nan")
    new, old = _resampled_metrics(y, [p_new, p_old], n_boot, seed)
    better = new[metric] < old[metric] if metric in ("log_loss", "brier") else new[metric] > old[metric]
    return float(better.mean())


PROMOTION_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top_decile", "capture_top_decile")


def comparable_metric(metric: str) -> int | None:
    """Check a promotion metric's name; for ``revenue_captured_top_K`` return K (else None)."""
    if metric in PROMOTION_METRICS:
        return None
    prefix = "revenue_captured_top_"
    capacity = re.fullmatch(rf"{prefix}([1-9][0-9]*)", metric)
    if capacity:
        return int(capacity.group(1))
    raise ValueError(
        f"promotion metric {metric!r} is unknown; expected one of {', '.join(PROMOTION_METRICS)} "
        f"or {prefix}K (MRR captured in the top K accounts)"
    )
