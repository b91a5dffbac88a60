"""Uplift learners and Qini / AUUC (churnml.impact.uplift, churnml.impact.qini) on data with a known effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.impact.qini import auuc, qini, qini_curve, uplift_curve
from churnml.impact.uplift import UpliftModel, fit_uplift


def test_qini_curve_by_hand() -> None:
    # ranked: (treated, kept), (control, churned), (treated, churned), (control, kept)
    score = np.array([4.0, 3.0, 2.0, 1.0])
    treated = np.array([True, False, True, False])
    churned = np.array([0, 1, 1, 0])
    assert qini_curve(score, treated, churned).tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0])
    # k=1: no held-out account yet -> 0; k=2: 1 - 0 * 1/1; k=3: 1 - 0 * 2/1; k=4: 1 - 1 * 2/2
    assert uplift_curve(score, treated, churned).tolist() == pytest.approx([0.0, 2.0, 1.5, 0.0])


def known_effect(n: int = 20000, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Churn 30%; a play cuts it by 20 points where ``onboarding_left`` > 0.5 and does nothing elsewhere."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"onboarding_left": rng.random(n), "noise": rng.random(n)})
    effect = np.where(x["onboarding_left"] > 0.5, 0.2, 0.0)
    treated = rng.random(n) < 0.8
    churned = rng.random(n) < 0.3 - effect * treated
    return x, treated, churned, effect


def test_a_good_ranking_has_positive_qini_a_reversed_one_negative() -> None:
    x, treated, churned, effect = known_effect()
    good = x["onboarding_left"].to_numpy()
    assert qini(good, treated, churned) > 0.02 and auuc(good, treated, churned) > 0.02
    assert qini(-good, treated, churned) < -0.02
    assert abs(qini(x["noise"].to_numpy(), treated, churned)) < 0.01
    with pytest.raises(ValueError, match="differ in length"):
        qini(good[:-1], treated, churned)


@pytest.mark.parametrize("kind", ["t", "x"])
def test_learners_find_who_the_play_helps_and_travel_whole(kind: str, tmp_path: Path) -> None:
    x, treated, churned, effect = known_effect()
    model = fit_uplift(x, treated, churned, kind=kind, rounds=100)
    test, _, _, truth = known_effect(4000, seed=2)
    uplift = model.uplift(test)
    helped, idle = uplift[truth > 0].mean(), uplift[truth == 0].mean()
    assert 0.12 < helped < 0.28 and abs(idle) < 0.05, (helped, idle)
    loaded = UpliftModel.load(model.save(tmp_path / "uplift"))
    assert np.array_equal(loaded.uplift(test), uplift)


def test_bad_input_names_what_is_wrong() -> None:
    x, treated, churned, _ = known_effect(200)
    with pytest.raises(ValueError, match="uplift kind"):
        fit_uplift(x, treated, churned, kind="s")
    with pytest.raises(ValueError, match="treatment flags"):
        fit_uplift(x, treated[:-1], churned)
    with pytest.raises(ValueError, match="no rows"):
        fit_uplift(x, np.ones(len(x), bool), churned)
    model = fit_uplift(x, treated, churned, kind="t", rounds=5)
    with pytest.raises(ValueError, match="noise"):
        model.uplift(x.drop(columns="noise"))
