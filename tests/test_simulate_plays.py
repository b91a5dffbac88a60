"""CSM plays in the simulator (churnml.simulate.plays): opt-in, a holdout by the product's hash, and a
ground truth whose true effects and potential outcomes agree with what happened."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.impact.holdout import holdout_draw
from churnml.simulate import DRIVERS, PLAYS, SimulationConfig, simulate
from churnml.simulate.plays import effect_matrix

# sha256 of the files the simulator wrote for SimulationConfig(customers=400, months=8, seed=11) before
# plays existed (churnml/simulate.py at f747c16): without plays, not one byte may change
BEFORE_PLAYS = {
    "customers.parquet": "b426fbdcf43962bc5dd0623c0ec68c5ba9a2a0dea3d7ace610e52f85e98b8adf",
    "events.parquet": "39db98defd643fbaef66c36cdb4dc057f4f93107ab5828e91374091d22332d41",
    "ground_truth.parquet": "95be45107adb930b669251d344c5d411b32b94eed468c90828b66ee8281cdf8e",
    "spec.yaml": "58aee6a18f4f3608dca1860dec6a978e782f4f2cdf5cb5d7df93e28516eb070d",
    "subscriptions.parquet": "a7498d4558b1c9a1b2f3a4349c439a46392dea8f02c182ebf054952dc1b68517",
}


def test_without_plays_the_output_is_byte_identical_to_before(tmp_path: Path) -> None:
    simulate(SimulationConfig(customers=400, months=8, seed=11), tmp_path, workers=1)
    written = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tmp_path.iterdir()}
    assert written == BEFORE_PLAYS


@pytest.fixture(scope="module")
def with_plays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plays")
    simulate(
        SimulationConfig(customers=3000, months=10, seed=4, plays=True, holdout_share=0.2), out, workers=1
    )
    return out


def test_the_call_list_is_held_out_by_the_products_hash(with_plays: Path) -> None:
    plays = pd.read_parquet(with_plays / "plays.parquet")
    assert len(plays) > 1000 and not plays.duplicated(["customer_id", "month"]).any()
    period = plays["month"].dt.strftime("%Y-%m")
    draws = np.array([holdout_draw([c], p)[0] for c, p in zip(plays["customer_id"], period, strict=True)])
    assert ((draws < 0.2) == (plays["arm"] == "control")).all()
    assert 0.15 < (plays["arm"] == "control").mean() < 0.25


def test_true_effects_differ_by_driver_and_match_the_potential_outcomes(with_plays: Path) -> None:
    plays = pd.read_parquet(with_plays / "plays.parquet")
    assert (plays["true_effect"] >= 0).all()
    assert np.allclose(
        plays["true_effect"], plays["churn_probability_untreated"] - plays["churn_probability_treated"]
    )
    by_play = plays.groupby("play")["true_effect"].mean()
    assert (
        by_play["Billing follow-up"] < 0.25 * by_play["Onboarding session"]
    )  # a failed card is not a call's to fix
    # a call can only prevent a churn decision, never cause one
    assert not (plays["decision_if_treated"] & ~plays["decision_if_untreated"]).any()
    # what happened is the potential outcome of the arm the account was in: a churn decision that fired
    # (a churn or a lapse) means no further month on the call list
    subs = pd.read_parquet(with_plays / "subscriptions.parquet")
    ended = subs.groupby("customer_id")["end_date"].apply(lambda e: e.notna().any())
    fired = np.where(plays["arm"] == "control", plays["decision_if_untreated"], plays["decision_if_treated"])
    assert ended.reindex(plays.loc[fired, "customer_id"]).all()


def test_plays_are_declared_for_every_driver_and_bad_settings_are_named() -> None:
    assert sorted(p.for_driver for p in PLAYS) == sorted(DRIVERS)
    matrix = effect_matrix(list(DRIVERS))
    assert matrix.shape == (len(PLAYS), len(DRIVERS)) and (matrix >= 0).all() and (matrix <= 1).all()
    with pytest.raises(ValueError, match="holdout_share"):
        SimulationConfig(plays=True, holdout_share=0.0)
    with pytest.raises(ValueError, match="call_share"):
        SimulationConfig(plays=True, call_share=1.5)
