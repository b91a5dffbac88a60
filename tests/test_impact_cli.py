"""`churnml score` holds out, `churnml impact` records outcomes, reports and learns uplift, and the next
`churnml score` ranks by expected revenue saved: the real commands on the simulated business and its
champion (conftest), with a SQLite store under a copy of the champion's home."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from churnml.config import Settings
from churnml.impact.holdout import CONTROL
from churnml.impact.play_effects import PlayEffects
from churnml.impact.uplift import UpliftModel
from churnml.workspace.holdouts import impact_outcomes, read_holdouts
from churnml.workspace.store import open_store
from tests.conftest import RISK_ENV, service_env

pytestmark = pytest.mark.slow


def churnml(home: Path, *args: str, **env: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "churnml"), *args],
                          env=service_env(home, **RISK_ENV, **env), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def home(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The champion's home without its store and reports: no campaign has run yet."""
    copy = tmp_path_factory.mktemp("impact") / "home"
    shutil.copytree(champion_home, copy, ignore=shutil.ignore_patterns("reports", "csm.db*"))
    return copy


def test_holdouts_outcomes_impact_and_uplift_end_to_end(home: Path, sim_dir: Path) -> None:
    spec = str(sim_dir / "spec.yaml")
    for as_of in ("2024-09-01", "2024-10-01"):
        out = churnml(home, "score", "--spec", spec, "--as-of", as_of, CHURNML_HOLDOUT_SHARE="0.5")
        assert f"campaign {as_of[:7]}:" in out and "held out as a control group" in out
    store = open_store(Settings(home=home).store_url)
    try:
        held = read_holdouts(store)
        assert set(held["period"]) == {"2024-09", "2024-10"}
        assert 0.35 < (held["arm"] == CONTROL).mean() < 0.65 and (held["probability"] == 0.5).all()
        out = churnml(home, "impact", "--spec", spec, "--fit-uplift")
        outcomes, pending = impact_outcomes(store)
    finally:
        store.close()
    assert len(outcomes) == len(held) and pending == 0  # both campaigns' horizons lie inside the data
    assert (
        f"{len(held):,} outcome(s) recorded" in out
        and "all plays" in out
        and "uplift (per-play learner) fitted" in out
        and "a play not seen yet" in out
    )
    # its churn model without a call also learnt from the accounts of those dates not on a call list
    not_listed = int(
        re.search(r"and ([\d,]+) account\(s\) of the same dates not on a call list", out)[1].replace(",", "")
    )
    assert not_listed > len(held)
    out = churnml(home, "score", "--spec", spec)
    scores = pd.read_parquet(home / "reports" / "scores.parquet")
    assert scores["expected_revenue_saved"].notna().all()
    months = 60 / (365.25 / 12)
    assert (scores["expected_revenue_saved"] - scores["uplift"] * scores["mrr"] * months).abs().max() < 1e-6
    with duckdb.connect(str(home / "reports" / "workspace.duckdb"), read_only=True) as con:
        assert con.execute("SELECT uplift_model, holdout_share FROM meta").fetchone() == ("play", "0.1")
    assert_scoring_passes_each_accounts_play(home, spec, scores)
    out = churnml(home, "score", "--spec", spec, CHURNML_HOLDOUT_SHARE="0")
    assert "holdouts are off" in out
    assert pd.read_parquet(home / "reports" / "scores.parquet")["holdout_arm"].isna().all()
    # training now leaves the treated accounts' rows out and counts the held-out ones for the call list
    out = churnml(home, "train", "--spec", spec, "--trials", "2")
    assert "treated row(s) left out" in out and "held-out row(s) counted for the call list" in out


def assert_scoring_passes_each_accounts_play(home: Path, spec: str, scores: pd.DataFrame) -> None:
    """Make only the most common play work (its accounts' churn cut by 90%, every other play and the
    mean play by nothing): the next score must give uplift to its accounts and to no other."""
    played = scores["top_play"].dropna()
    assert played.nunique() > 1, "the simulated accounts should get several plays"
    working = played.value_counts().index[0]
    folder = Settings(home=home).uplift_path
    learnt = UpliftModel.load(folder)
    assert learnt.kind == "play" and len(learnt.play_effects.plays) > 1
    effects = {"plays": [{**p, "shrunk_log_risk_ratio": math.log(0.1) if p["play"] == working else 0.0}
                         for p in learnt.play_effects.to_dict()["plays"]],
               "mean_log_risk_ratio": 0.0, "between_play_variance": 0.0}  # fmt: skip
    learnt.play_effects = PlayEffects.from_dict(effects)
    assert working in learnt.play_effects.plays, "the working play should have been learnt"
    learnt.save(folder)
    churnml(home, "score", "--spec", spec)
    rescored = pd.read_parquet(home / "reports" / "scores.parquet")
    mine = (rescored["top_play"] == working).to_numpy()
    assert (rescored.loc[mine, "uplift"] > 0).all() and (rescored.loc[~mine, "uplift"] == 0).all()
