"""Qini and uplift curves, and the areas under them, computed here (no uplift library needed).

Accounts are ranked by a score (best first). After the top ``k`` the Qini curve counts the extra
customers kept: ``kept_t(k) - kept_c(k) * n_t(k) / n_c(k)`` (Radcliffe, 2007), with ``kept`` the
accounts that did not churn. The uplift curve is the difference of keep rates times ``k``. Each area
is the mean height over k = 1..N, minus that of random targeting (the straight line to the curve's
end), divided by N: 0 for a random ranking, higher for better ones, comparable across rankings of the
same rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auuc", "qini", "qini_curve", "uplift_curve"]


def _ranked(score: np.ndarray, treated: np.ndarray, churned: np.ndarray) -> tuple[np.ndarray, ...]:
    score, treated, churned = (np.asarray(a) for a in (score, treated, churned))
    if not len(score) == len(treated) == len(churned):
        raise ValueError(
            f"qini: score, treated and churned differ in length ({len(score)}, {len(treated)}, {len(churned)})"
        )
    order = np.argsort(-score, kind="stable")
    t = treated[order].astype(bool)
    kept = 1.0 - churned[order].astype(float)
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    kept_t, kept_c = np.cumsum(kept * t), np.cumsum(kept * ~t)
    return n_t, n_c, kept_t, kept_c


def qini_curve(score: np.ndarray, treated: np.ndarray, churned: np.ndarray) -> np.ndarray:
    """Extra customers kept after targeting the top k (k = 1..N)."""
    n_t, n_c, kept_t, kept_c = _ranked(score, treated, churned)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n_c > 0, kept_t - kept_c * n_t / n_c, 0.0)


def uplift_curve(score: np.ndarray, treated: np.ndarray, churned: np.ndarray) -> np.ndarray:
    """(keep rate treated - keep rate held out) among the top k, times k (k = 1..N)."""
    n_t, n_c, kept_t, kept_c = _ranked(score, treated, churned)
    k = np.arange(1, len(n_t) + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_t > 0) & (n_c > 0), (kept_t / n_t - kept_c / n_c) * k, 0.0)


def _area(curve: np.ndarray) -> float:
    n = len(curve)
    if n == 0:
        return float("nan")
    random = curve[-1] * np.arange(1, n + 1) / n
    return float((curve - random).mean() / n)


def qini(score: np.ndarray, treated: np.ndarray, churned: np.ndarray) -> float:
    """Area between the Qini curve and random targeting, per account."""
    return _area(qini_curve(score, treated, churned))


def auuc(score: np.ndarray, treated: np.ndarray, churned: np.ndarray) -> float:
    """Area between the uplift curve and random targeting, per account."""
    return _area(uplift_curve(score, treated, churned))
