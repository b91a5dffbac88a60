from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from churnml.data import load_dataset
from churnml.labels import build_labels
from churnml.simulate import BLOCK_SIZE, DRIVERS, SimulationConfig, simulate
from churnml.spec import load_spec

TABLES = ["customers", "events", "subscriptions", "ground_truth"]
CONFIG = SimulationConfig(customers=BLOCK_SIZE + 2_000, months=18, seed=7)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(CONFIG, out, workers=2)
    return out


@pytest.fixture(scope="module")
def loaded(simulated: Path, tmp_path_factory: pytest.TempPathFactory):
    from churnml.config import Settings
    from churnml.engine import connect

    con = connect(Settings(home=tmp_path_factory.mktemp("home"), duckdb_memory_limit="2GB", duckdb_threads=2))
    spec = load_spec(simulated / "spec.yaml")
    tables = load_dataset(con, spec)
    report = tables.report
    labels = build_labels(tables, spec)
    con.register("labels_df", labels)
    con.execute("CREATE TABLE labels AS SELECT * FROM labels_df WHERE churned IS NOT NULL")
    yield con, report, labels
    con.close()


def test_same_seed_same_data_whatever_the_worker_count(simulated: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    simulate(CONFIG, again, workers=1)
    for name in TABLES:
        assert pq.read_table(simulated / f"{name}.parquet").equals(
            pq.read_table(again / f"{name}.parquet")
        ), name
    assert (simulated / "spec.yaml").read_text() == (again / "spec.yaml").read_text()


def test_another_seed_other_data(tmp_path: Path) -> None:
    small = SimulationConfig(customers=300, months=6, seed=1)
    simulate(small, tmp_path / "a", workers=1)
    simulate(SimulationConfig(customers=300, months=6, seed=2), tmp_path / "b", workers=1)
    a = pq.read_table(tmp_path / "a" / "events.parquet")
    b = pq.read_table(tmp_path / "b" / "events.parquet")
    assert not a.equals(b)


def test_simulated_data_passes_validation_without_quarantine(loaded) -> None:
    _, report, _ = loaded
    assert report.ok and not report.quarantined
    assert report.tables["customers"].clean == CONFIG.customers
    assert report.tables["events"].clean > 100 * CONFIG.customers  # multi-user usage: many events per account


def test_event_vocabulary_and_users(loaded) -> None:
    con, _, _ = loaded
    types = {r[0] for r in con.execute("SELECT DISTINCT event_type FROM events").fetchall()}
    assert types == {"login", "feature_use", "onboarding_step", "onboarding_completed", "support_ticket",
                     "nps_response", "payment_succeeded", "payment_failed", "seat_change", "plan_change"}  # fmt: skip
    nps = con.execute(
        "SELECT min(value), max(value) FROM events WHERE event_type = 'nps_response'"
    ).fetchall()[0]
    csat = con.execute(
        "SELECT min(value), max(value) FROM events WHERE event_type = 'support_ticket'"
    ).fetchall()[0]
    assert nps == (0.0, 10.0) and csat == (1.0, 5.0)
    multi_user = con.execute(
        "SELECT count(*) FROM (SELECT customer_id FROM events WHERE event_type = 'login' "
        "GROUP BY 1 HAVING count(DISTINCT user_id) >= 5)"
    ).fetchall()[0][0]
    assert multi_user > 0.2 * CONFIG.customers


def test_churn_is_consistent_across_tables(loaded, simulated: Path) -> None:
    con, _, _ = loaded
    truth = pd.read_parquet(simulated / "ground_truth.parquet")
    con.register("truth", truth)
    # every churner's last subscription ends at its churn date; everyone else still has an open one
    ends = con.execute(
        'SELECT customer_id, max("end") AS last_end, bool_or("end" IS NULL) AS is_open FROM subscriptions GROUP BY 1'
    ).df()
    merged = ends.merge(truth[["customer_id", "churn_date"]], on="customer_id", how="left")
    churned = merged["churn_date"].notna()
    assert churned.sum() == len(truth) > 0.1 * CONFIG.customers
    assert not merged.loc[churned, "is_open"].any() and merged.loc[~churned, "is_open"].all()
    diff = (merged.loc[churned, "last_end"] - merged.loc[churned, "churn_date"]).abs()
    assert (diff <= pd.Timedelta(milliseconds=1)).all()
    after = con.execute(
        'SELECT count(*) FROM events e JOIN truth t USING (customer_id) WHERE e."timestamp" >= t.churn_date'
    ).fetchall()[0][0]
    assert after == 0
    before = con.execute(
        'SELECT count(*) FROM events e JOIN customers c USING (customer_id) WHERE e."timestamp" < c.signup_date'
    ).fetchall()[0][0]
    assert before == 0


def test_ground_truth_records_every_driver(simulated: Path) -> None:
    truth = pd.read_parquet(simulated / "ground_truth.parquet")
    for name, (weight, _) in DRIVERS.items():
        np.testing.assert_allclose(truth[f"{name}_contribution"], weight * truth[f"{name}_value"])
    primaries = set(truth["primary_driver"])
    assert set(DRIVERS) <= primaries
    top = truth[[f"{k}_contribution" for k in DRIVERS]].to_numpy().argmax(axis=1)
    active = truth[[f"{k}_contribution" for k in DRIVERS]].to_numpy().max(axis=1) > 0
    assert (np.array(list(DRIVERS))[top][active] == truth["primary_driver"][active]).all()


# Observable signals of each planted driver, as of the observation date (events strictly before it).
SIGNALS = {
    # a failed invoice in the last 35 days not followed by a successful payment
    "failed_payment": """max(e."timestamp") FILTER (e.event_type = 'payment_failed') >= l.observation_date - INTERVAL 35 DAY
        AND max(e."timestamp") FILTER (e.event_type = 'payment_failed')
            > coalesce(max(e."timestamp") FILTER (e.event_type = 'payment_succeeded'), TIMESTAMP '1970-01-01')""",
    "detractor_nps": """arg_max(CASE WHEN e.event_type = 'nps_response' THEN e.value END, CASE WHEN e.event_type = 'nps_response' THEN e."timestamp" END) <= 6""",
    "support_friction": """bool_or(e.event_type = 'support_ticket' AND e.value <= 2 AND e."timestamp" >= l.observation_date - INTERVAL 60 DAY)""",
    "seat_contraction": """bool_or(e.event_type = 'seat_change' AND e.value < 0 AND e."timestamp" >= l.observation_date - INTERVAL 60 DAY)""",
    "incomplete_onboarding": """NOT bool_or(e.event_type = 'onboarding_completed') AND min(e."timestamp") >= l.observation_date - INTERVAL 150 DAY""",
    "engagement_decline": """count(*) FILTER (e.event_type = 'login' AND e."timestamp" >= l.observation_date - INTERVAL 30 DAY)
        < 0.5 * count(*) FILTER (e.event_type = 'login' AND e."timestamp" >= l.observation_date - INTERVAL 90 DAY
                                 AND e."timestamp" < l.observation_date - INTERVAL 30 DAY) / 2""",
}


def test_planted_drivers_raise_observed_churn(loaded) -> None:
    """Each driver, seen only in behaviour before the date, is followed by markedly more churn."""
    con, _, labels = loaded
    assert labels["churned"].notna().sum() > 20_000
    signal_sql = ",\n".join(f"coalesce({sql}, false) AS {name}" for name, sql in SIGNALS.items())
    rows = con.execute(
        f"""SELECT l.customer_id, l.observation_date, any_value(l.churned) AS churned, {signal_sql}
            FROM labels l JOIN events e ON e.customer_id = l.customer_id AND e."timestamp" < l.observation_date
            GROUP BY l.customer_id, l.observation_date"""
    ).df()
    base = rows["churned"].mean()
    assert 0.03 < base < 0.2
    for name in SIGNALS:
        flagged = rows[rows[name]]
        assert len(flagged) > 100, name
        lift = flagged["churned"].mean() / rows.loc[~rows[name], "churned"].mean()
        logging.getLogger(__name__).info("%s: churn lift %.2f", name, lift)
        assert lift > 1.5, f"{name}: churn lift {lift:.2f}"
