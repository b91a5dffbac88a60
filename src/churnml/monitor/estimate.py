"""Performance before the labels arrive, from calibrated probabilities alone (CBPE), and once they have.

A calibrated probability is the chance that the account churns: each scored account counts as
``p`` of a churner and ``1 - p`` of a retained one, and ROC-AUC, average precision, capture in the top K
and precision at the tier cut-offs follow from those expected counts (confidence-based performance
estimation, as in NannyML's CBPE, written here: NannyML does not install with our pins). The band is
the spread of the metric over labellings drawn from those probabilities: how far the realised figure
may fall from the estimate by chance alone for a population this size. The estimate holds under
covariate shift (who is scored changes, the odds given the features do not) and is blind to concept
drift (the odds themselves change): realised performance, once the labels mature, catches that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from churnml.evaluate import grouped_ranking_metrics, score_groups

__all__ = ["CHECKED", "Estimate", "METRICS", "estimate_performance", "realised_performance"]

METRICS = ("roc_auc", "pr_auc", "capture_top_k", "precision_high", "precision_medium", "churn_rate")


# what realised performance is checked against its estimate on (ranking falling short, or churn off)
CHECKED = ("roc_auc", "pr_auc", "churn_rate")


@dataclass(frozen=True)
class Estimate:
    metric: str
    value: float
    low: float  # 2.5% of the labellings drawn from the probabilities
    high: float  # 97.5%

    def contradicted_by(self, realised: float, alpha: float = 0.05) -> bool:
        """Whether the realised figure is beyond what chance allows at level ``alpha``: below the band for
        a ranking metric, outside it for the churn rate. The 95% band is widened to ``alpha`` (normal
        scale), so that several checks share one false-alarm rate."""
        scale = float(stats.norm.isf(alpha / 2) / stats.norm.isf(0.025))
        low = self.value - scale * (self.value - self.low)
        high = self.value + scale * (self.high - self.value)
        if self.metric == "churn_rate":
            return not low <= realised <= high
        return realised < low


def _grouped(p: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and AP of each row of ``labels`` (fractional or 0/1) for scores ``p``, from one sort."""
    order, starts, _ = score_groups(p, p)
    pos = np.add.reduceat(labels[:, order], starts, axis=1)
    neg = np.add.reduceat(1.0 - labels[:, order], starts, axis=1)
    return grouped_ranking_metrics(pos, neg)


def _other_metrics(
    p: np.ndarray, labels: np.ndarray, capacity: int, tiers: dict[str, float]
) -> dict[str, np.ndarray]:
    """Capture in the top ``capacity`` by probability and precision at each tier's cut-off."""
    top = np.argsort(-p, kind="stable")[: max(1, capacity)]
    total = labels.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"capture_top_k": np.where(total > 0, labels[:, top].sum(axis=1) / total, np.nan),
               "churn_rate": total / max(labels.shape[1], 1)}  # fmt: skip
        for tier, cut in tiers.items():
            above = p >= cut
            out[f"precision_{tier}"] = (
                labels[:, above].mean(axis=1) if above.any() else np.full(len(labels), np.nan)
            )
    return out


def estimate_performance(
    p: np.ndarray, capacity: int = 100, tiers: dict[str, float] | None = None, draws: int = 300, seed: int = 0,
    chance: np.ndarray | None = None, chance_draws: list[np.ndarray] | None = None, chance_clusters: int = 1,
) -> dict[str, Estimate]:  # fmt: skip
    """Each metric's expected value with a 95% band, for accounts ranked (and tiered) by ``p`` whose
    chance of churning is ``chance`` (default ``p``: a calibrated model; `churnml monitor` passes the
    probabilities recalibrated on the rows the model did not learn from). The band holds the labelling's
    chance and, given ``chance_draws`` (the chances under bootstrap recalibrations), how unsure the
    recalibration itself is. When those draws resampled ``chance_clusters`` dates, their spread is an
    estimate from that few dates: it counts at Student's t with one less degree of freedom (and the
    bootstrap's (k-1)/k shrinkage undone), not at the normal 1.96."""
    p = np.clip(np.asarray(p, float), 0.0, 1.0)
    chance = p if chance is None else np.clip(np.asarray(chance, float), 0.0, 1.0)
    tiers = tiers or {"high": 0.5, "medium": 0.2}
    expected = chance[None, :]
    auc, ap = _grouped(p, expected)
    values = {"roc_auc": auc, "pr_auc": ap} | _other_metrics(p, expected, capacity, tiers)
    rng = np.random.default_rng(seed)
    drawn = (rng.random((draws, len(p))) < chance).astype(float)
    d_auc, d_ap = _grouped(p, drawn)
    spread = {"roc_auc": d_auc, "pr_auc": d_ap} | _other_metrics(p, drawn, capacity, tiers)
    recalibrated = _recalibration_spread(p, chance_draws or [], capacity, tiers)
    k = chance_clusters
    quantile = float(stats.t.isf(0.025, k - 1) * np.sqrt(k / (k - 1))) if k > 1 else 1.96
    out = {}
    for metric, value in values.items():
        sample = spread[metric][np.isfinite(spread[metric])]
        v = float(value[0])
        low, high = np.percentile(sample, [2.5, 97.5]) if len(sample) else (np.nan, np.nan)
        extra = quantile * recalibrated.get(metric, 0.0)  # independent sources: half-widths add in quadrature
        low, high = v - np.hypot(v - low, extra), v + np.hypot(high - v, extra)
        out[metric] = Estimate(metric, v, float(low), float(high))
    return out


def _recalibration_spread(
    p: np.ndarray, chance_draws: list[np.ndarray], capacity: int, tiers: dict[str, float]
) -> dict[str, float]:
    """Each metric's standard deviation over the recalibrations drawn (nothing without them)."""
    if len(chance_draws) < 2:
        return {}
    expected = np.clip(np.vstack(chance_draws), 0.0, 1.0)
    auc, ap = _grouped(p, expected)
    values = {"roc_auc": auc, "pr_auc": ap} | _other_metrics(p, expected, capacity, tiers)
    spread = {}
    for metric, v in values.items():
        finite = v[np.isfinite(v)]  # a tier nobody reaches has no precision in any draw
        spread[metric] = float(np.std(finite, ddof=1)) if len(finite) >= 2 else 0.0
    return spread


def realised_performance(
    y: np.ndarray, p: np.ndarray, capacity: int = 100, tiers: dict[str, float] | None = None
) -> dict[str, float]:
    """The same metrics once the labels are known."""
    p = np.clip(np.asarray(p, float), 0.0, 1.0)
    labels = np.asarray(y, float)[None, :]
    tiers = tiers or {"high": 0.5, "medium": 0.2}
    auc, ap = _grouped(p, labels)
    values = {"roc_auc": auc, "pr_auc": ap} | _other_metrics(p, labels, capacity, tiers)
    return {k: float(v[0]) for k, v in values.items()}
