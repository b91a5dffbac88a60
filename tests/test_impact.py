"""Holdouts, outcomes and the impact report (churnml.impact), and their records in the CSM store
(churnml.workspace.holdouts) on SQLite and a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churnml.impact.holdout import (
    CONTROL,
    TREATED,
    HoldoutPolicy,
    campaign_period,
    holdout_draw,
    mark_holdouts,
)
from churnml.impact.outcomes import matured_outcomes
from churnml.impact.report import impact_report, report_rows
from churnml.impact.stats import TOO_EARLY, compare_save_rates, minimum_detectable_effect
from churnml.workspace.holdouts import impact_outcomes, read_holdouts, record_holdouts, record_outcomes
from churnml.workspace.store import NewActivity, Store, StoreError
from tests.test_store import store, store_url  # noqa: F401 - the store fixtures, on both databases

AS_OF = pd.Timestamp("2025-07-01")


def scored(n: int = 4000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0.0, 0.9, n)
    return pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)], "as_of": AS_OF, "probability": probability,
        "risk_tier": np.where(probability >= 0.5, "high", np.where(probability >= 0.2, "medium", "low")),
        "mrr": rng.choice([100.0, 500.0], n), "top_play": rng.choice(["Onboarding session", "Billing call"], n),
    })  # fmt: skip


# ------------------------------------------------------------------------------------------ holdouts


def test_holdouts_are_a_hash_of_customer_and_period_at_the_configured_share() -> None:
    scores = scored()
    marked = mark_holdouts(scores, campaign_period(AS_OF), HoldoutPolicy(0.1))
    eligible = scores["risk_tier"] != "low"
    assert marked.loc[~eligible, "holdout_arm"].isna().all()  # low risk: not on any call list
    share = (marked.loc[eligible, "holdout_arm"] == CONTROL).mean()
    assert 0.08 < share < 0.12, share
    assert (marked.loc[eligible, "holdout_probability"] == 0.1).all()
    again = mark_holdouts(scores.sample(frac=1, random_state=1), "2025-07", HoldoutPolicy(0.1))
    assert again.set_index("customer_id")["holdout_arm"].equals(
        marked.set_index("customer_id")["holdout_arm"].loc[again["customer_id"]]
    )
    next_month = mark_holdouts(scores, campaign_period(AS_OF + pd.Timedelta(days=31)), HoldoutPolicy(0.1))
    changed = (next_month["holdout_arm"] != marked["holdout_arm"])[eligible].mean()
    assert changed > 0.1  # a new period, a new draw: nobody is a control forever
    # the draw is independent of risk: control and treated differ by no more than sampling allows
    groups = marked[eligible].groupby("holdout_arm")["probability"]
    mean, var, n = groups.mean(), groups.var(), groups.size()
    assert abs(mean[CONTROL] - mean[TREATED]) < 4 * math.sqrt((var / n).sum())


def test_the_draw_is_stable_across_processes_and_uniform() -> None:
    assert holdout_draw(["C0000001"], "2025-07")[0] == pytest.approx(holdout_draw(["C0000001"], "2025-07")[0])
    draws = holdout_draw([f"X{i}" for i in range(20000)], "2025-01")
    assert 0 <= draws.min() and draws.max() < 1
    assert np.histogram(draws, bins=10, range=(0, 1))[0].min() > 1800


def test_holdouts_off_mark_nobody_and_a_bad_share_names_the_setting() -> None:
    marked = mark_holdouts(scored(200), "2025-07", HoldoutPolicy(0.0))
    assert marked["holdout_arm"].isna().all()
    with pytest.raises(ValueError, match="holdout_share"):
        HoldoutPolicy(0.7)


# ------------------------------------------------------------------------------------------ statistics


def test_the_interval_and_mde_match_the_textbook_formulas() -> None:
    c = compare_save_rates(treated=900, treated_saved=810, control=100, control_saved=80)
    assert c.effect == pytest.approx(0.9 - 0.8)
    pt, pc = 811 / 902, 81 / 102  # Agresti-Caffo: one success and one failure added per group
    half = 1.959964 * math.sqrt(pt * (1 - pt) / 902 + pc * (1 - pc) / 102)
    assert (c.low, c.high) == pytest.approx((pt - pc - half, pt - pc + half), abs=1e-5)
    pooled = 890 / 1000
    assert c.mde == pytest.approx(
        (1.959964 + 0.841621) * math.sqrt(pooled * (1 - pooled) * (1 / 900 + 1 / 100)), abs=1e-5
    )
    assert c.verdict == "the plays save accounts"


def test_a_wide_interval_is_too_early_to_tell_and_a_narrow_null_is_not() -> None:
    small = compare_save_rates(treated=40, treated_saved=36, control=5, control_saved=4)
    assert small.low < 0 < small.high and small.verdict == TOO_EARLY
    large = compare_save_rates(treated=20000, treated_saved=18000, control=20000, control_saved=18010)
    assert large.verdict.startswith("no effect as large as 5")
    empty = compare_save_rates(treated=10, treated_saved=9, control=0, control_saved=0)
    assert empty.verdict == TOO_EARLY and math.isnan(empty.effect) and math.isinf(empty.mde)
    assert minimum_detectable_effect(0.5, 100, 100) > minimum_detectable_effect(0.5, 1000, 1000)
    with pytest.raises(ValueError, match="control"):
        compare_save_rates(10, 5, 10, 11)


def test_interval_coverage_is_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        t, c = rng.binomial(300, 0.85), rng.binomial(40, 0.75)
        r = compare_save_rates(300, int(t), 40, int(c))
        hits += r.low <= 0.10 <= r.high
    assert 0.93 < hits / 2000 < 0.975


# ------------------------------------------------------------------------------------------ outcomes, report


def test_outcomes_wait_for_the_whole_horizon_and_revenue_kept_counts_stayers() -> None:
    assignments = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "period": "2025-05",
                                "scored_on": [dt.date(2025, 5, 1)] * 3 + [dt.date(2025, 6, 1)], "mrr": [100.0, 200.0, None, 50.0],
                                "horizon_days": 60})  # fmt: skip
    labels = pd.DataFrame({"customer_id": ["a", "b", "c", "d"], "churned": pd.array([0, 1, 0, 1], dtype="Int8"),
                           "observation_date": pd.to_datetime(["2025-05-01"] * 3 + ["2025-06-01"])})  # fmt: skip
    out = matured_outcomes(assignments, labels, pd.Timestamp("2025-05-15"))
    assert list(out["customer_id"]) == ["a", "b", "c"]  # d's horizon has not passed, though it churned
    assert list(out["churned"]) == [False, True, False]
    assert out["revenue_kept"].tolist() == pytest.approx([100 * 60 / (365.25 / 12), 0.0, 0.0])


def outcomes_frame(effect: dict[str, float], n: int = 3000, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    play = rng.choice(list(effect), n)
    arm = np.where(rng.random(n) < 0.2, CONTROL, TREATED)
    base = 0.3
    churn = np.where(arm == TREATED, base - np.vectorize(effect.get)(play), base)
    return pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "period": "2025-05", "arm": arm,
                         "play": play, "mrr": 100.0, "churned": rng.random(n) < churn, "horizon_months": 2.0})  # fmt: skip


def test_the_report_finds_a_play_that_works_and_one_that_does_not() -> None:
    report = impact_report(outcomes_frame({"Onboarding session": 0.2, "Billing call": 0.0}), pending=7,
                           holdout_share=0.2, play_cost=20.0)  # fmt: skip
    plays = {p.play: p for p in report.plays}
    works, idle = plays["Onboarding session"], plays["Billing call"]
    assert works.comparison.low > 0 and works.comparison.low < 0.2 < works.comparison.high
    assert idle.comparison.low < 0 < idle.comparison.high
    treated = works.comparison.treated
    assert works.revenue_at_stake == pytest.approx(treated * 100 * 2)
    assert works.revenue_kept == pytest.approx(works.comparison.effect * treated * 200)
    assert works.cost == 20 * treated and works.roi == pytest.approx(
        (works.revenue_kept - works.cost) / works.cost
    )
    assert report.pending == 7 and report.holdouts_enabled
    rows = report_rows(report)
    assert rows[0]["play"] == "all plays" and {r["play"] for r in rows[1:]} == set(plays)
    assert impact_report(outcomes_frame({"x": 0.1}), play_cost=None).overall.roi is None


def test_the_report_refuses_an_unknown_arm_naming_the_column() -> None:
    frame = outcomes_frame({"x": 0.1}).assign(arm="maybe")
    with pytest.raises(ValueError, match="outcomes.arm"):
        impact_report(frame)


# ------------------------------------------------------------------------------------------ store


def test_assignments_are_recorded_once_per_period_and_outcomes_join_them(store: Store) -> None:  # noqa: F811
    marked = mark_holdouts(scored(300), "2025-07", HoldoutPolicy(0.2))
    eligible = int(marked["holdout_arm"].notna().sum())
    assert record_holdouts(store, marked, 60) == eligible
    # a re-score in the same period with another share records nothing new: the first assignment stands
    assert record_holdouts(store, mark_holdouts(scored(300), "2025-07", HoldoutPolicy(0.5)), 60) == 0
    held = read_holdouts(store)
    assert len(held) == eligible and set(held["arm"]) == {CONTROL, TREATED}
    assert (held["probability"] == 0.2).all() and (held["horizon_days"] == 60).all()
    first = held.iloc[:50].assign(churned=[i % 3 == 0 for i in range(50)], revenue_kept=1.0)
    assert record_outcomes(store, first, dt.date(2025, 9, 1)) == 50
    assert record_outcomes(store, first, dt.date(2025, 9, 2)) == 0
    assert len(read_holdouts(store, without_outcome=True)) == eligible - 50
    outcomes, pending = impact_outcomes(store)
    assert len(outcomes) == 50 and pending == eligible - 50
    assert outcomes["churned"].sum() == sum(i % 3 == 0 for i in range(50))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as con:
        con.execute(sa.text("DELETE FROM holdouts"))


def test_the_activity_log_says_how_many_calls_were_made_and_who_was_contacted_though_held_out(
    store: Store,  # noqa: F811
) -> None:
    """The comparison is by assignment (intent to treat); the log counts the plays done within each
    assignment's horizon: a correction replaces its entry, "not needed" is not a play."""
    record_holdouts(store, mark_holdouts(scored(300), "2025-07", HoldoutPolicy(0.2)), 60)
    held = read_holdouts(store)
    record_outcomes(store, held.assign(churned=False, revenue_kept=1.0), dt.date(2025, 9, 1))
    treated, control = held[held["arm"] == TREATED], held[held["arm"] == CONTROL]
    a, b, c, e = treated["customer_id"].iloc[:4]
    start = pd.Timestamp(treated["scored_on"].iloc[0]).date()
    today = dt.date(2026, 1, 1)

    def log(customer: str, days: int, outcome: str = "reached", replaces: int | None = None) -> int:
        entry = NewActivity(
            customer, "Billing fix", start + dt.timedelta(days=days), outcome, replaces=replaces
        )
        return store.record_activity(entry, "ana", today).id

    log(a, 3)  # a call within the horizon
    log(b, 5, "not_needed")  # looked at, nothing to do: not a play
    log(c, 90)  # after the 60-day horizon
    log(control["customer_id"].iloc[0], 10)  # held out, and called anyway
    log(e, 2, "not_needed", replaces=log(e, 1))  # a call, corrected to "not needed"
    outcomes, _ = impact_outcomes(store)
    logged = set(outcomes.loc[outcomes["logged"], "customer_id"])
    assert logged == {a, control["customer_id"].iloc[0]}
    report = impact_report(outcomes)
    assert (report.overall.treated_logged, report.overall.control_logged) == (1, 1)
    assert report_rows(report)[0]["logged"] == f"1 of {len(treated):,}"


def test_a_bad_arm_is_refused_naming_the_field(store: Store) -> None:  # noqa: F811
    marked = mark_holdouts(scored(50), "2025-07", HoldoutPolicy(0.2))
    marked.loc[marked["holdout_arm"].notna(), "holdout_arm"] = "sometimes"
    with pytest.raises(StoreError, match="holdout_arm"):
        record_holdouts(store, marked, 60)


# ------------------------------------------------------------------------------------------ training rows


def test_training_leaves_treated_rows_out_and_counts_held_out_rows_for_the_call_list() -> None:
    from churnml.impact.training import untreated_rows

    dates = pd.to_datetime(["2025-03-01", "2025-04-01", "2025-05-01", "2025-09-01"])
    table = pd.DataFrame({"customer_id": np.repeat(["a", "b", "c"], 4), "observation_date": np.tile(dates, 3),
                          "churned": [0, 1, 0, 0] * 3})  # fmt: skip
    assignments = pd.DataFrame({"customer_id": ["a", "b"], "scored_on": [dt.date(2025, 4, 10)] * 2,
                                "arm": [TREATED, CONTROL], "probability": [0.1, 0.1]})  # fmt: skip
    rows = untreated_rows(table, assignments, horizon_days=60)
    counts = rows.table.groupby(["customer_id", "observation_date"]).size()
    # within 60 days of the play (March 1st is 40 days before it): a's rows out, b's counted 10 times
    assert counts.get(("a", dates[0])) is None and counts.get(("a", dates[2])) is None
    assert counts[("a", dates[3])] == 1  # September: long after the play
    assert [counts[("b", d)] for d in dates] == [10, 10, 10, 1]
    assert [counts[("c", d)] for d in dates] == [1, 1, 1, 1]
    assert (rows.treated_left_out, rows.held_out_weighted, rows.copies) == (3, 3, 27)
    assert "3 treated row(s) left out" in rows.describe()
    with pytest.raises(ValueError, match="holdouts.arm"):
        untreated_rows(table, assignments.assign(arm="maybe"), 60)


def test_uplift_learns_beside_the_call_list_only_from_accounts_no_play_touched() -> None:
    from churnml.impact.training import not_listed_rows

    dates = pd.to_datetime(["2025-02-01", "2025-04-01", "2025-09-01"])
    labels = pd.DataFrame({"customer_id": np.repeat(["a", "b", "c"], 3), "observation_date": np.tile(dates, 3),
                           "churned": [0, 1, 0] * 3})  # fmt: skip
    # a treated and b held out on April 1st: their rows within 60 days of it are on the list or carry it
    assignments = pd.DataFrame({"customer_id": ["a", "b"], "scored_on": [dt.date(2025, 4, 1)] * 2,
                                "arm": [TREATED, CONTROL], "probability": [0.1, 0.1]})  # fmt: skip
    rows = not_listed_rows(labels, assignments, horizon_days=60)
    kept = set(zip(rows["customer_id"], rows["observation_date"], strict=True))
    assert kept == {("a", dates[2]), ("b", dates[2]), *(("c", d) for d in dates)}
    assert list(rows.columns) == ["customer_id", "observation_date", "churned"]
    assert len(not_listed_rows(labels, assignments.iloc[:0], 60)) == len(labels)
