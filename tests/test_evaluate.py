from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from churnml.evaluate import (
    bootstrap_intervals,
    churn_metrics,
    expected_calibration_error,
    paired_win_share,
    revenue_captured,
    top_fraction_stats,
    weighted_ranking_metrics,
)


def test_ece_is_zero_when_probabilities_match_rates_and_large_when_not() -> None:
    y = np.array([0] * 8 + [1] * 2 + [0] * 2 + [1] * 8)
    p = np.array([0.2] * 10 + [0.8] * 10)
    assert expected_calibration_error(y, p) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(20, 0.95)) == pytest.approx(0.45)


def test_lift_and_capture_in_the_top_fraction() -> None:
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    p = np.linspace(1, 0, 10)  # ranks rows in order
    lift, capture = top_fraction_stats(y, p, 0.2)
    assert lift == pytest.approx(1.0 / 0.3) and capture == pytest.approx(2 / 3)


def test_revenue_captured_ranks_by_revenue_at_risk() -> None:
    y = np.array([1, 0, 1, 1])
    p = np.array([0.9, 0.8, 0.1, 0.5])
    mrr = np.array([10.0, 1000.0, 500.0, 100.0])
    # revenue at risk: 9, 800, 50, 50 -> top 2 = rows 1 (no churn) and 2 (500 of 610 churned MRR)
    assert revenue_captured(y, p, mrr, 2) == pytest.approx(500 / 610)


def test_churn_metrics_keys_and_perfect_ranking() -> None:
    y = np.array([0, 0, 1, 1])
    m = churn_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), mrr=np.ones(4), capacity=2)
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0 and m["revenue_captured_top_2"] == 1.0
    assert m["base_rate"] == 0.5 and m["log_loss"] < 0.3


def _sample(n: int, seed: int, signal: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(int)
    y[:2] = (1, 0)
    p = np.clip(rng.random(n) * 0.5 + signal * y, 0, 1)
    return y, np.round(p, 2)  # rounded: many tied scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_ranking_metrics_match_scikit_learn_with_ties(seed: int) -> None:
    y, p = _sample(400, seed)
    weights = np.random.default_rng(seed).integers(0, 4, size=(6, len(y))).astype(float)
    auc, ap = weighted_ranking_metrics(y, p, weights)
    for i, w in enumerate(weights):
        assert auc[i] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y, p, sample_weight=w), abs=1e-12)


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_rows() -> None:
    y, p = _sample(1_500, 3)
    ci = bootstrap_intervals(y, p, seed=0)
    point = churn_metrics(y, p)
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier"):
        low, high = ci[metric]
        assert low < point[metric] < high, metric
    assert bootstrap_intervals(y, p, seed=0) == ci  # reproducible for a seed
    big_y, big_p = _sample(15_000, 4)
    big = bootstrap_intervals(big_y, big_p, seed=0)
    for metric in ("roc_auc", "pr_auc"):
        assert big[metric][1] - big[metric][0] < 0.6 * (ci[metric][1] - ci[metric][0]), metric
    assert bootstrap_intervals(np.zeros(20, int), np.full(20, 0.1)) == {}  # one class: no interval


def test_paired_win_share_separates_a_better_model_from_a_tie() -> None:
    y, informative = _sample(2_000, 5, signal=0.3)
    noise = np.random.default_rng(6).random(len(y)) * 0.5
    assert paired_win_share(y, informative, noise, "pr_auc") > 0.95
    assert paired_win_share(y, noise, informative, "roc_auc") < 0.05
    assert paired_win_share(y, informative, informative, "pr_auc") == 0.0
    # lower-is-better metrics count a smaller loss as the win
    calibrated = np.where(y == 1, 0.6, 0.05)
    assert paired_win_share(y, calibrated, np.full(len(y), 0.5), "log_loss") > 0.95
    assert np.isnan(paired_win_share(y, informative, noise, "ece"))
