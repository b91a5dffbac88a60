"""Batch scoring: tiers, health, revenue at risk, reasons with plays, history, retention, workspace."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from churnml.config import Settings
from churnml.data import load_dataset
from churnml.engine import connect
from churnml.explain import DEFAULT_PLAYBOOK, REASONS_SHOWN, load_playbook
from churnml.explain.lint import lint_reasons
from churnml.features.batch import latest_date
from churnml.retention import cohort_retention, retention_tables
from churnml.score import RiskPolicy, health_score, revenue_at_risk, score_customers, write_workspace
from churnml.spec import load_spec
from tests.conftest import expected_tier


def test_tiers_health_and_revenue_at_risk() -> None:
    p = np.array([0.05, 0.2, 0.49, 0.5, 0.99])
    assert list(RiskPolicy().tiers(p)) == ["low", "medium", "medium", "high", "high"]
    assert list(health_score(p)) == [95, 80, 51, 50, 1]
    # 60-day horizon = 1.97 months of MRR
    np.testing.assert_allclose(revenue_at_risk(p, np.array([100.0] * 5), 60), p * 100 * 60 / (365.25 / 12))
    assert revenue_at_risk(np.array([0.5]), np.array([np.nan]), 30)[0] == 0.0
    with pytest.raises(ValueError, match="medium < high"):
        RiskPolicy(high=0.2, medium=0.3)


def test_churnml_score_uses_the_configured_tiers(champion_home: Path) -> None:
    """`churnml score` ran with CHURNML_RISK_HIGH=0.3 / CHURNML_RISK_MEDIUM=0.1 (conftest)."""
    scores = pd.read_parquet(champion_home / "reports" / "scores.parquet")
    assert list(scores["risk_tier"]) == [expected_tier(p) for p in scores["probability"]]
    assert scores["probability"].between(0.3, 0.5).any()  # so the default cut-offs would differ


@pytest.fixture(scope="module")
def batch(sim_dir: Path, trained):
    _, _, result = trained
    with connect(Settings(home=sim_dir, duckdb_memory_limit="1GB")) as con:
        spec = load_spec(sim_dir / "spec.yaml")
        tables = load_dataset(con, spec)
        scored = score_customers(
            tables, spec, result.model, latest_date(tables), {"model_version": "7"}, history=3
        )
        extra = retention_tables(tables, spec, scored)
    return scored, extra


def test_batch_scores_rank_active_customers_by_revenue_at_risk(batch) -> None:
    scored, _ = batch
    s = scored.scores
    assert s["customer_id"].is_unique and len(s) > 500
    assert list(s["rank"]) == list(range(1, len(s) + 1))
    assert s["revenue_at_risk"].is_monotonic_decreasing
    np.testing.assert_allclose(s["revenue_at_risk"], s["probability"] * s["mrr"] * 60 / (365.25 / 12))
    assert set(s["risk_tier"]) <= {"high", "medium", "low"}
    assert s["csm_owner"].notna().all() and s["segment"].notna().all()


def test_batch_reasons_come_by_kind_with_plays_only_on_problems(batch) -> None:
    scored, _ = batch
    r = scored.reasons
    assert set(r["kind"]) == {"problem", "protective", "context"}
    assert r.groupby(["customer_id", "kind"])["rank"].max().max() <= REASONS_SHOWN
    problems, protective = r[r["kind"] == "problem"], r[r["kind"] == "protective"]
    assert (problems["contribution"] > 0).all() and (protective["contribution"] < 0).all()
    assert r[r["kind"] != "problem"]["play"].isna().all()
    # one reason per group: logins, feature use and active users are one usage reason, not three
    assert not problems.duplicated(["customer_id", "signal"]).any()
    tiers = scored.scores.set_index("customer_id")["risk_tier"]
    needs = problems["customer_id"].map(tiers) != "low"
    assert problems.loc[~needs, "play"].isna().all()  # an account in the low tier needs no call
    with_play = problems[needs & problems["play"].notna()]
    assert len(with_play) > 0.3 * needs.sum()
    assert set(with_play["play"]) <= {p.name for p in DEFAULT_PLAYBOOK.plays}
    first = problems[problems["rank"] == 1].set_index("customer_id")["sentence"]
    top = scored.scores.set_index("customer_id")
    acting = top[top["risk_tier"] != "low"]
    assert (first.reindex(acting.index).fillna("No action needed") == acting["top_reason"]).all()
    assert (top.loc[top["risk_tier"] == "low", "top_reason"] == "No action needed").all()
    assert not r["sentence"].str.contains(r"\bnan\b|\bNone\b|_", regex=True).any()
    assert problems["comparison"].notna().all()  # each problem says how accounts that stayed compare


def test_the_batch_reasons_pass_the_lint(batch, trained) -> None:
    """0 sentences that sum identifiers, double a label, print a missing value or contradict their play,
    over the reasons the pages show (REASONS_SHOWN of each kind per account)."""
    scored, _ = batch
    model = trained[2].model
    action = scored.scores.set_index("customer_id")["risk_tier"] != "low"
    assert lint_reasons(scored.reasons, model.catalogue, action) == []


def test_what_changed_compares_the_same_reasons_and_never_calls_a_shown_one_gone(batch) -> None:
    scored, _ = batch
    changes, reasons = scored.changes, scored.reasons
    shown = reasons[reasons["kind"] == "problem"].groupby("customer_id")["signal"].agg(set)
    assert len(changes) > 100
    for cid, lines in changes.groupby("customer_id"):
        now = shown.get(cid, set())
        assert set(lines.loc[lines["status"] != "gone", "signal"]) == now
        assert not set(lines.loc[lines["status"] == "gone", "signal"]) & now
    # each line quotes one column at both dates, as the sentence's family tracks it
    assert changes["text"].str.contains(" → ").all()
    trend = changes[changes["feature"].str.endswith("_count_30d")]
    assert len(trend) and trend["text"].str.match(r"^[A-Z].* in the last 30 days: [\d,]+ → [\d,]+$").all()


def test_history_covers_past_dates_and_ends_at_the_scoring_date(batch) -> None:
    scored, _ = batch
    h = scored.history
    assert h["observation_date"].max() == scored.as_of
    assert h["observation_date"].nunique() == 4  # three past dates + now
    assert set(h["customer_id"]) <= set(scored.scores["customer_id"])
    now = h[h["observation_date"] == scored.as_of].set_index("customer_id")["probability"]
    np.testing.assert_allclose(
        now.sort_index(), scored.scores.set_index("customer_id")["probability"].sort_index()
    )
    assert all(isinstance(json.loads(x), list) for x in h["reasons"])


def test_retention_tables(batch) -> None:
    scored, extra = batch
    monthly = extra["retention_monthly"]
    assert monthly["churn_rate"].between(0, 0.2).all()  # no half-observed month reading as mass churn
    assert monthly["month"].max() <= scored.as_of - pd.Timedelta(days=60)
    np.testing.assert_allclose(monthly["churn_rate"] + monthly["retention_rate"], 1)
    assert monthly["nrr"].between(0.5, 1.5).all()
    assert monthly["nps"].dropna().between(-100, 100).all()
    cohorts = extra["cohort_retention"]
    assert (cohorts[cohorts["months_since"] == 0]["retention"] == 1).all()
    assert cohorts["retention"].between(0, 1).all()
    seg = extra["segment_summary"]
    assert seg["accounts"].sum() == len(scored.scores)
    assert seg["revenue_at_risk"].sum() == pytest.approx(scored.scores["revenue_at_risk"].sum())


def test_cohort_retention_counts_survivors() -> None:
    months = pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"])
    pop = pd.DataFrame(
        {"customer_id": ["old", "a", "b", "a", "b", "a"],
         "observation_date": [months[0], months[1], months[1], months[2], months[2], months[2]][:6]}
    )  # fmt: skip
    pop = pop.drop_duplicates()
    pop.loc[len(pop)] = ["c", months[1]]
    got = cohort_retention(pop)
    feb = got[got["cohort"] == months[1]].set_index("months_since")
    assert feb.loc[0, "size"] == 3 and feb.loc[1, "active"] == 2
    assert feb.loc[1, "retention"] == pytest.approx(2 / 3)
    assert "old" not in got.to_string()  # customers already there in the first month form no cohort


def test_workspace_is_written_atomically_and_keeps_the_old_file_on_failure(batch, tmp_path: Path) -> None:
    scored, extra = batch
    path = write_workspace(scored, tmp_path / "workspace.duckdb", extra)
    with duckdb.connect(str(path), read_only=True) as con:
        tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        assert {"scores", "reasons", "score_history", "retention_monthly", "cohort_retention",
                "segment_summary", "meta"} <= tables  # fmt: skip
        assert con.execute("SELECT model_version FROM meta").fetchall()[0][0] == "7"
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017, PT011 - any failure while writing
        write_workspace(scored, path, {"SCORES": pd.DataFrame({"x": [1]})})  # a second "scores" table
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_playbook_matches_reasons_whose_facts_fit_and_loads_from_yaml(tmp_path: Path) -> None:
    def play(row: dict, feature: str, group: str, event_type: str | None = None) -> str | None:
        found = DEFAULT_PLAYBOOK.play_for(row, feature=feature, group=group, event_type=event_type, signal=group,
                                          slug=event_type or "")  # fmt: skip
        return found.name if found else None

    young = {"onboarding_completed_count_total": float("nan"), "tenure_days": 40.0}
    assert play(young, "onboarding_completed_count_total", "onboarding") == "Onboarding session"
    assert play({**young, "tenure_days": 400.0}, "onboarding_completed_count_total", "onboarding") is None
    assert play({"payment_failed_count_90d": 1.0}, "payment_failed_count_30d", "billing") == "Billing fix"
    assert play({"payment_failed_count_90d": 0.0}, "days_since_last_payment_succeeded", "billing") is None
    detractor = {"nps_response_score_last": 5.0, "days_since_last_nps_response_score": 30.0}
    assert play(detractor, "nps_response_score_last", "feedback") == "Executive call"
    falling = {"login_count_trend_ratio": 0.5, "login_count_30d": 6.0}
    assert play(falling, "login_count_trend_ratio", "usage", "login") == "Training and check-in"
    assert play(
        {"login_count_trend_ratio": 1.2, "login_count_30d": 6.0}, "login_count_total", "usage", "login"
    ) == ("Usage check-in")
    path = tmp_path / "playbook.yaml"
    path.write_text(
        "plays:\n  - name: Call them\n    action: Pick up the phone.\n    when: {groups: [usage]}\n"
        "    require: ['login_count_30d < 5']\n"
    )
    custom = load_playbook(path)
    assert custom.play_for({"login_count_30d": 2.0}, feature="login_count_30d", group="usage", event_type="login",
                           signal="usage").name == "Call them"  # fmt: skip
    assert custom.play_for({"login_count_30d": 9.0}, feature="login_count_30d", group="usage", event_type="login",
                           signal="usage") is None  # fmt: skip
    path.write_text("plays:\n  - name: Call them\n    when: {groups: [usage]}\n")
    with pytest.raises(ValueError, match=r"plays\.0\.action"):
        load_playbook(path)


def test_a_playbook_condition_on_a_column_the_model_lacks_is_named(trained) -> None:
    """A misspelt column makes a team's play silently never shown: scoring and the service name it."""
    from churnml.explain import Explainer, Play
    from churnml.explain.playbook import Match, Playbook

    model = trained[2].model
    assert Explainer(model.catalogue).unread_conditions() == []  # the default playbook reads this model whole
    typo = Playbook(plays=[
        Play(name="Call them", action="Call.", when=Match(groups=["usage"]), require=["login_count_30 < 5"]),
        Play(name="Drop", action="Call.", when=Match(groups=["usage"]), require_any=["{s}_count_30d == 0"]),
        Play(name="Every type", action="Call.", when=Match(groups=["usage"]), require=["{s}_cuont_30d == 0"]),
    ])  # fmt: skip
    unread = Explainer(model.catalogue, playbook=typo).unread_conditions()
    assert len(unread) == 2, unread  # {s}_count_30d exists for the model's event types
    assert "'Call them'" in unread[0] and "login_count_30" in unread[0] and "never shown" in unread[0]
    assert "'Every type'" in unread[1] and "_cuont_30d" in unread[1]


def test_a_model_and_its_reasons_travel_as_files_and_json_and_arrive_equal(sim_dir: Path, trained) -> None:
    """How Spark executors get the model (its own files, checked on load) and give back the reasons."""
    from churnml.explain import AccountReasons
    from churnml.features.batch import scoring_rows
    from churnml.model import ChurnModel
    from churnml.score import score_and_explain

    _, _, result = trained
    files = result.model.to_files()
    assert set(files) == {"booster.txt", "model.json"}
    arrived = ChurnModel.from_files(files)
    with connect(Settings(home=sim_dir, duckdb_memory_limit="1GB")) as con:
        spec = load_spec(sim_dir / "spec.yaml")
        tables = load_dataset(con, spec)
        rows = scoring_rows(tables, spec, latest_date(tables)).head(300)
        here = score_and_explain(tables, rows, result.model, RiskPolicy(), 5)
        there = score_and_explain(tables, rows, arrived, RiskPolicy(), 5)
    pd.testing.assert_frame_equal(there.scored, here.scored)
    assert any(a.problems for a in here.explained) and any(a.context for a in here.explained)
    assert (
        [AccountReasons.from_json(a.to_json()) for a in here.explained] == here.explained == there.explained
    )
    with pytest.raises(ValueError, match="corrupt"):
        ChurnModel.from_files({**files, "model.json": files["model.json"][:100]})
    with pytest.raises(FileNotFoundError, match="booster.txt is missing"):
        ChurnModel.from_files({"model.json": files["model.json"]})
