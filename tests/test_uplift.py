"""Uplift learners, per-play effects and Qini / AUUC (churnml.impact.uplift, .play_effects, .qini) on data
with a known effect."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.impact.play_effects import estimate_play_effects
from churnml.impact.qini import auuc, qini, qini_curve, uplift_curve
from churnml.impact.uplift import StaleUpliftModel, UpliftModel, fit_uplift


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
    with pytest.raises(ValueError, match="needs each row's play"):
        fit_uplift(x, treated, churned, kind="play")
    with pytest.raises(ValueError, match="treatment flags"):
        fit_uplift(x, treated[:-1], churned)
    with pytest.raises(ValueError, match="no rows"):
        fit_uplift(x, np.ones(len(x), bool), churned)
    model = fit_uplift(x, treated, churned, kind="t", rounds=5)
    with pytest.raises(ValueError, match="noise"):
        model.uplift(x.drop(columns="noise"))


WORKS, IDLE = "Onboarding session", "Billing follow-up"


def known_plays(
    n: int = 20000, seed: int = 1
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A randomised holdout (10% held out) where the onboarding session removes 60% of its accounts' churn
    and the billing follow-up nothing; the billing accounts are the riskier, so risk alone ranks them first."""
    rng = np.random.default_rng(seed)
    risk_signal = rng.random(n)
    play = np.where(rng.random(n) < 0.5, WORKS, IDLE).astype(object)
    untreated = np.where(play == IDLE, 0.25, 0.12) * (0.5 + risk_signal)
    x = pd.DataFrame({"risk_signal": risk_signal, "billing_failed": (play == IDLE).astype(float),
                      "noise": rng.random(n)})  # fmt: skip
    treated = rng.random(n) >= 0.1
    reduction = np.where(play == WORKS, 0.6, 0.0)
    churned = rng.random(n) < untreated * (1 - reduction * treated)
    return x, treated, churned, play, untreated * reduction


def test_per_play_learner_ranks_the_play_that_works_first_though_its_accounts_are_safer() -> None:
    x, treated, churned, play, effect = known_plays()
    model = fit_uplift(x, treated, churned, kind="play", play=play, rounds=100)
    reductions = {name: e.relative_reduction for name, e in model.play_effects.plays.items()}
    assert 0.45 < reductions[WORKS] < 0.75 and abs(reductions[IDLE]) < 0.15, reductions
    test, _, _, test_play, truth = known_plays(4000, seed=2)
    uplift = model.uplift(test, test_play)
    top = np.argsort(-uplift)[: len(uplift) // 5]
    assert (test_play[top] == WORKS).mean() > 0.95
    # within the play that works, the riskier accounts gain more
    works = test_play == WORKS
    assert pd.Series(uplift[works]).corr(pd.Series(truth[works]), method="spearman") > 0.8
    assert 0.05 < uplift[works].mean() < 0.14 and abs(uplift[~works].mean()) < 0.03


def test_per_play_learner_travels_whole_and_gives_an_unseen_play_the_mean_play(tmp_path: Path) -> None:
    x, treated, churned, play, _ = known_plays(4000)
    model = fit_uplift(x, treated, churned, kind="play", play=play, rounds=30)
    folder = model.save(tmp_path / "uplift")
    saved = json.loads((folder / "uplift.json").read_text())
    assert saved["kind"] == "play" and {p["play"] for p in saved["play_effects"]["plays"]} == {WORKS, IDLE}
    loaded = UpliftModel.load(folder)
    assert np.array_equal(loaded.uplift(x, play), model.uplift(x, play))
    # a play never seen in learning, or none at all, gets the mean play's reduction: no error
    mean = model.play_effects.mean_relative_reduction
    assert min(model.play_effects.plays[p].relative_reduction for p in (WORKS, IDLE)) < mean
    for unseen in (np.full(len(x), "Brand new play", object), np.full(len(x), None, object), None):
        got = loaded.uplift(x, unseen)
        assert np.allclose(got, mean * loaded.churn_if_untreated(x)), unseen
    with pytest.raises(ValueError, match="3 plays"):
        model.uplift(x, play[:3])
    # it has no model per arm: asking for one is an error that says so, not a KeyError
    with pytest.raises(ValueError, match="'play' learner has no 'control' model"):
        model.churn_if_control(x)


def test_per_play_learner_is_not_fooled_by_the_plays_success() -> None:
    """Nine accounts in ten are called and the onboarding session removes 90% of their churn: their
    churn without a call is what the held-out tenth shows, not what the treated ones did."""
    x, treated, churned, play, _ = known_plays(20000, seed=3)
    rng = np.random.default_rng(33)  # not known_plays' stream
    play = np.full(len(x), WORKS, object)
    untreated = 0.12 * (0.5 + x["risk_signal"].to_numpy())
    churned = rng.random(len(x)) < untreated * np.where(treated, 0.1, 1.0)
    model = fit_uplift(x, treated, churned, kind="play", play=play, rounds=100)
    assert 0.8 < model.play_effects.plays[WORKS].relative_reduction < 0.95
    p0 = model.churn_if_untreated(x)
    assert abs(p0.mean() / untreated.mean() - 1) < 0.15, (p0.mean(), untreated.mean())
    # churn that the treated accounts' success hides: what a churn model on every row would predict
    assert churned.mean() < 0.4 * untreated.mean()
    assert pd.Series(p0).corr(pd.Series(untreated), method="spearman") > 0.8


def test_per_play_learner_learns_churn_below_the_call_list_from_accounts_not_on_it() -> None:
    """Only the riskier half is called; the safer half, never listed, shows how churn falls with the
    signal below the list's cut, which the call list alone cannot show."""
    rng = np.random.default_rng(4)
    n = 20000
    x = pd.DataFrame({"risk_signal": rng.random(n), "noise": rng.random(n)})
    untreated = 0.02 + 0.3 * x["risk_signal"].to_numpy()
    listed = x["risk_signal"].to_numpy() > 0.5
    treated = listed & (rng.random(n) >= 0.2)
    play = np.where(listed, WORKS, None).astype(object)
    churned = rng.random(n) < untreated * np.where(treated, 0.5, 1.0)
    dates = np.repeat(pd.date_range("2024-01-01", periods=8, freq="MS").to_numpy(), n // 8)
    both = fit_uplift(x, treated, churned, kind="play", play=play, listed=listed, dates=dates)
    only = fit_uplift(x[listed], treated[listed], churned[listed], kind="play", play=play[listed])
    safe = pd.DataFrame({"risk_signal": [0.05, 0.25, 0.45], "noise": 0.5})
    learnt, extrapolated = both.churn_if_untreated(safe), only.churn_if_untreated(safe)
    truth = 0.02 + 0.3 * safe["risk_signal"].to_numpy()
    assert np.all(np.abs(learnt - truth) < 0.04) and learnt[0] < learnt[1] < learnt[2], learnt
    assert np.ptp(extrapolated) < 0.02 and abs(extrapolated[0] - truth[0]) > 0.1, extrapolated
    # the play's effect is measured on the call list alone; the learner travels whole
    assert both.play_effects.plays[WORKS].treated == treated.sum()
    assert both.play_effects.plays[WORKS].control == (listed & ~treated).sum()


def test_rows_not_on_the_call_list_cannot_be_treated_and_sizes_are_named() -> None:
    x, treated, churned, play, _ = known_plays(300)
    with pytest.raises(ValueError, match="not on the call list"):
        fit_uplift(x, treated, churned, kind="play", play=play, listed=np.zeros(len(x), bool))
    with pytest.raises(ValueError, match="299 listed flags"):
        fit_uplift(x, treated, churned, kind="play", play=play, listed=np.ones(len(x) - 1, bool))
    with pytest.raises(ValueError, match="2 dates"):
        fit_uplift(x, treated, churned, kind="play", play=play, dates=np.zeros(2))


def test_a_per_play_learner_of_the_earlier_format_is_stale_and_scoring_goes_on_without_it(
    tmp_path: Path,
) -> None:
    from churnml.cli.scoring import _uplift_model
    from churnml.config import Settings

    x, treated, churned, play, _ = known_plays(2000)
    settings = Settings(home=tmp_path)
    folder = fit_uplift(x, treated, churned, kind="play", play=play, rounds=5).save(settings.uplift_path)
    meta = json.loads((folder / "uplift.json").read_text())
    (folder / "uplift.json").write_text(json.dumps({**meta, "format": 2}))  # two boosters, one per arm
    with pytest.raises(StaleUpliftModel, match="format 2"):
        UpliftModel.load(folder)
    assert _uplift_model(settings, churn_model=None) is None  # a warning; score ranks by revenue at risk


def test_a_model_saved_before_plays_still_loads_and_a_broken_one_names_its_file(tmp_path: Path) -> None:
    x, treated, churned, _ = known_effect(2000)
    model = fit_uplift(x, treated, churned, kind="t", rounds=10)
    folder = model.save(tmp_path / "old")
    old = pd.Series(
        {"kind": "t", "treated_share": model.treated_share, "columns": "\x1f".join(model.columns)}
    )
    old.to_json(folder / "uplift.json")  # how it was saved before the per-play learner
    loaded = UpliftModel.load(folder)
    assert loaded.columns == ["onboarding_left", "noise"] and loaded.play_effects is None
    assert np.array_equal(loaded.uplift(x), model.uplift(x))
    (folder / "treated.txt").unlink()
    with pytest.raises(ValueError, match="treated.txt"):
        UpliftModel.load(folder)
    (folder / "uplift.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(folder / "uplift.json")):
        UpliftModel.load(folder)


def test_play_effects_shrink_small_plays_toward_the_mean_and_survive_empty_arms() -> None:
    rows = []
    # two plays with the same raw estimate (churn 10% treated, 20% held out): one with 2,000 held-out
    # accounts, one with 40; a third that halves nothing; a fourth nobody was held out from
    for play, n_control, treated_rate in (("big", 2000, 0.10), ("small", 40, 0.10), ("idle", 2000, 0.20)):
        n_treated = 9 * n_control
        rows += [(play, True, i < treated_rate * n_treated) for i in range(n_treated)]
        rows += [(play, False, i < 0.2 * n_control) for i in range(n_control)]
    rows += [("never held out", True, False)] * 50 + [(None, False, True)] * 5
    frame = pd.DataFrame(rows, columns=["play", "treated", "churned"])
    effects = estimate_play_effects(frame["play"], frame["treated"], frame["churned"])
    big, small, idle, never = (effects.plays[p] for p in ("big", "small", "idle", "never held out"))
    assert 0.4 < big.relative_reduction < 0.6 and abs(idle.relative_reduction) < 0.1
    mean = effects.mean_relative_reduction
    # the same raw estimate: the small play's is pulled toward the mean play, the big one's barely moves
    assert small.log_risk_ratio == pytest.approx(big.log_risk_ratio, abs=0.05)
    assert mean < small.relative_reduction < big.relative_reduction - 0.05
    assert abs(big.shrunk_log_risk_ratio - big.log_risk_ratio) < 0.02
    assert math.isnan(never.log_risk_ratio) and never.relative_reduction == pytest.approx(mean)
    assert effects.relative_reduction(["big", "unknown", None]).tolist() == pytest.approx(
        [big.relative_reduction, mean, mean]
    )
    with pytest.raises(ValueError, match="one arm is empty"):
        estimate_play_effects(["a", "a"], [True, True], [False, True])
