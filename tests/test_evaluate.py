from __future__ import annotations

import numpy as np
import pytest

from churnml.evaluate import churn_metrics, expected_calibration_error, revenue_captured, top_fraction_stats


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
