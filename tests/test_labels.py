from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnml.config import repo_root
from churnml.data import load_dataset
from churnml.labels import build_labels, observation_dates
from churnml.spec import load_spec, parse_spec
from tests.conftest import tiny_spec_dict

T = pd.Timestamp


def _load(
    con, customers: dict, events: dict, subscriptions: dict | None, churn: dict, observation: dict, tmp_path
):
    for name, data in [("customers", customers), ("events", events), ("subscriptions", subscriptions)]:
        if data is not None:
            pd.DataFrame(data).to_parquet(tmp_path / f"{name}.parquet", index=False)
    spec = tiny_spec_dict()
    spec["churn"] = churn
    spec["observation"] = observation
    if subscriptions is None:
        spec.pop("subscriptions")
    spec = parse_spec(spec, base_dir=tmp_path)
    return load_dataset(con, spec), spec


def _by_customer(labels: pd.DataFrame, date: str) -> dict[str, object]:
    rows = labels[labels["observation_date"] == T(date)]
    return {r.customer_id: (None if pd.isna(r.churned) else int(r.churned)) for r in rows.itertuples()}


def test_cancellation_labels_grace_lead_and_exclusions(con, tmp_path) -> None:
    ids = ["stay", "quit", "lapse", "gone", "late_back", "soon"]
    subs = {
        "cust": ["stay", "quit", "lapse", "lapse", "gone", "late_back", "late_back", "soon"],
        "start": [
            T("2024-01-01"),
            T("2024-01-01"),
            T("2024-01-01"),
            T("2024-03-20"),
            T("2024-01-01"),
            T("2024-01-01"),
            T("2024-05-20"),
            T("2024-01-01"),
        ],  # fmt: skip
        "end": [
            None,
            T("2024-03-10"),
            T("2024-03-05"),
            None,
            T("2024-02-15"),
            T("2024-03-10"),
            None,
            T("2024-03-03"),
        ],
        "mrr": [10.0] * 8,
    }
    customers = {"id": ids, "signup": [T("2024-01-01")] * 6, "plan": ["p"] * 6, "mrr": [10.0] * 6}
    # behaviour runs until 2024-09-01 so the March window is fully observed
    events = {"cust": ids, "ts": [T("2024-09-01")] * 6, "kind": ["login"] * 6, "val": [None] * 6}
    tables, spec = _load(
        con, customers, events, subs,
        churn={"definition": "cancellation", "grace_days": 30},
        observation={"start": "2024-02-01", "end": "2024-03-01", "every": "1 month", "lead_days": 5, "horizon_days": 30},
        tmp_path=tmp_path,
    )  # fmt: skip
    labels = build_labels(tables, spec)
    march = _by_customer(labels, "2024-03-01")
    # quit: ends 03-10, inside [03-06, 03-31) -> churn; lapse: back after 15 days (< grace) -> not churn
    # gone: churned before 03-01 -> not a row; late_back: back after 71 days (> grace) -> churn
    # soon: ends 03-03, inside the lead time [03-01, 03-06) -> too late to act, left out
    assert march == {"stay": 0, "quit": 1, "lapse": 0, "late_back": 1}
    feb = _by_customer(labels, "2024-02-01")
    assert feb == {"stay": 0, "quit": 0, "lapse": 0, "gone": 1, "late_back": 0, "soon": 0}
    quit_row = labels[(labels.customer_id == "quit") & (labels.observation_date == T("2024-03-01"))]
    assert quit_row["churn_date"].iloc[0] == T("2024-03-10")


def test_cancellation_rows_near_data_end_are_unlabelled(con, tmp_path) -> None:
    subs = {
        "cust": ["a", "b"],
        "start": [T("2024-01-01")] * 2,
        "end": [None, T("2024-04-10")],
        "mrr": [1.0, 1.0],
    }
    customers = {"id": ["a", "b"], "signup": [T("2024-01-01")] * 2, "plan": ["p"] * 2, "mrr": [1.0, 1.0]}
    events = {"cust": ["a", "b"], "ts": [T("2024-05-01")] * 2, "kind": ["login"] * 2, "val": [None] * 2}
    tables, spec = _load(
        con, customers, events, subs,
        churn={"definition": "cancellation", "grace_days": 10},
        observation={"start": "2024-02-01", "end": "2024-04-01", "every": "1 month", "horizon_days": 30},
        tmp_path=tmp_path,
    )  # fmt: skip
    labels = build_labels(tables, spec)
    # data ends 05-01; with grace 10 a 30-day window is confirmed only if it ends by 04-21
    assert _by_customer(labels, "2024-03-01") == {"a": 0, "b": 0}
    # 04-01: a's "no churn" cannot be confirmed (window ends 05-01 > 04-21); b's end on 04-10 + 10 days grace
    # is observed, so b's churn is known
    assert _by_customer(labels, "2024-04-01") == {"a": None, "b": 1}
    window = tables.window
    assert observation_dates(
        spec.model_copy(update={"observation": spec.observation.model_copy(update={"end": None})}), window
    )[-1] == T("2024-03-01")


def test_inactivity_labels(con, tmp_path) -> None:
    events = {
        "cust": ["a", "a", "b", "b", "c", "d"],
        "ts": [
            T("2024-02-20"),
            T("2024-03-10"),
            T("2024-02-25"),
            T("2024-05-15"),
            T("2023-10-01"),
            T("2024-06-30"),
        ],
        "kind": ["purchase", "purchase", "purchase", "purchase", "purchase", "purchase"],
        "val": [1.0] * 6,
    }
    customers = {
        "id": ["a", "b", "c", "d"],
        "signup": [T("2023-01-01")] * 4,
        "plan": ["p"] * 4,
        "mrr": [1.0] * 4,
    }
    tables, spec = _load(
        con, customers, events, None,
        churn={"definition": "inactivity", "activity_event_types": ["purchase"], "active_lookback_days": 90},
        observation={"start": "2024-03-01", "end": "2024-03-01", "every": "1 month", "horizon_days": 60},
        tmp_path=tmp_path,
    )  # fmt: skip
    labels = build_labels(tables, spec)
    # a: bought 03-10 -> active; b: next purchase 05-15 > 04-30 -> churned; c: last purchase > 90 days ago -> not active;
    # d: first purchase after the date -> not active yet
    assert _by_customer(labels, "2024-03-01") == {"a": 0, "b": 1}


def test_labels_ignore_the_distant_past(con, tmp_path) -> None:
    """Only activity in the lookback makes a customer active; older history changes nothing."""
    base = {
        "cust": ["a", "b"],
        "ts": [T("2024-02-20"), T("2024-02-25")],
        "kind": ["purchase"] * 2,
        "val": [1.0, 1.0],
    }
    customers = {"id": ["a", "b"], "signup": [T("2020-01-01")] * 2, "plan": ["p"] * 2, "mrr": [1.0] * 2}
    churn = {"definition": "inactivity", "activity_event_types": ["purchase"], "active_lookback_days": 90}
    obs = {"start": "2024-03-01", "end": "2024-03-01", "every": "1 month", "horizon_days": 30}
    tail = {"cust": ["a", "b"], "ts": [T("2024-06-01")] * 2, "kind": ["purchase"] * 2, "val": [1.0, 1.0]}
    events = {k: base[k] + tail[k] for k in base}
    tables, spec = _load(con, customers, events, None, churn, obs, tmp_path)
    before = build_labels(tables, spec)
    older = {k: events[k] + ({"cust": ["a", "b"], "ts": [T("2021-05-01")] * 2, "kind": ["purchase"] * 2,
                              "val": [1.0, 1.0]})[k] for k in events}  # fmt: skip
    tables, spec = _load(con, customers, older, None, churn, obs, tmp_path)
    pd.testing.assert_frame_equal(before, build_labels(tables, spec))


@pytest.mark.shared_data
def test_completejourney_labels_reproduce_source_counts(shared_data, con) -> None:
    """SOURCE.md: active households and churn rates per date, for 60/28/90-day horizons."""
    expected = {
        "2017-07-01": (2300, 6.35, 13.65, 4.26),
        "2017-08-01": (2317, 7.12, 15.45, 4.40),
        "2017-09-01": (2311, 7.05, 15.36, 4.11),
        "2017-10-01": (2314, 6.48, 14.65, 3.93),
    }
    spec = load_spec(repo_root() / "training" / "specs" / "completejourney.yaml")
    spec = spec.with_source_path(shared_data / "completejourney")
    tables = load_dataset(con, spec)
    report = tables.report
    assert report.tables["events"].quarantined == 0
    assert (
        con.execute(
            "SELECT count(DISTINCT customer_id) FROM events WHERE event_type = 'purchase'"
        ).fetchall()[0][0]
        == 2469
    )
    dates = [T(d) for d in expected]
    for i, horizon in enumerate((60, 28, 90)):
        obs = spec.observation.model_copy(update={"horizon_days": horizon})
        labels = build_labels(tables, spec.model_copy(update={"observation": obs}), dates=dates)
        for date, row in expected.items():
            got = labels[labels["observation_date"] == T(date)]["churned"]
            assert len(got) == row[0], (date, horizon)
            assert got.notna().all()
            assert round(100 * got.mean(), 2) == row[1 + i], (date, horizon)


_hours = st.integers(min_value=-120 * 24, max_value=-1)  # strictly before the date


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(extra=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), _hours), max_size=10))
def test_labels_of_active_customers_ignore_changes_before_the_date(con, tmp_path, extra) -> None:
    """Property: for customers active at t either way, events before t never change their label."""
    t = T("2024-03-01")
    events = {
        "cust": ["a", "a", "b", "c", "c"],
        "ts": [T("2024-02-20"), T("2024-03-10"), T("2024-02-25"), T("2024-02-01"), T("2024-06-01")],
        "kind": ["purchase"] * 5,
        "val": [1.0] * 5,
    }
    customers = {"id": ["a", "b", "c"], "signup": [T("2023-01-01")] * 3, "plan": ["p"] * 3, "mrr": [1.0] * 3}
    churn = {"definition": "inactivity", "activity_event_types": ["purchase"], "active_lookback_days": 90}
    obs = {"start": "2024-03-01", "end": "2024-03-01", "every": "1 month", "horizon_days": 60}
    tables, spec = _load(con, customers, events, None, churn, obs, tmp_path)
    before = _by_customer(build_labels(tables, spec), "2024-03-01")
    more = {
        "cust": events["cust"] + [c for c, _ in extra],
        "ts": events["ts"] + [t + pd.Timedelta(hours=h) for _, h in extra],
        "kind": events["kind"] + ["purchase"] * len(extra),
        "val": events["val"] + [1.0] * len(extra),
    }
    tables, spec = _load(con, customers, more, None, churn, obs, tmp_path)
    after = _by_customer(build_labels(tables, spec), "2024-03-01")
    for customer in before.keys() & after.keys():
        assert before[customer] == after[customer], customer
    assert before == {"a": 0, "b": 1, "c": 1}


def _inactivity_until(con, tmp_path, times: list[pd.Timestamp], observed_until=None):  # noqa: ANN001, ANN202
    """Customer a buys on 03-01 and at ``times``; a 30-day horizon from 04-01 ends on 05-01."""
    ts = [T("2024-03-01"), *times]
    events = {"cust": ["a"] * len(ts), "ts": ts, "kind": ["purchase"] * len(ts), "val": [1.0] * len(ts)}
    customers = {"id": ["a"], "signup": [T("2024-01-01")], "plan": ["p"], "mrr": [1.0]}
    observation = {"start": "2024-04-01", "end": "2024-04-01", "every": "1 month", "horizon_days": 30}
    if observed_until is not None:
        observation["observed_until"] = observed_until
    churn = {"definition": "inactivity", "activity_event_types": ["purchase"], "active_lookback_days": 90}
    tables, spec = _load(con, customers, events, None, churn, observation, tmp_path)
    return tables, _by_customer(build_labels(tables, spec), "2024-04-01")


def test_date_only_data_is_observed_through_its_last_day(con, tmp_path) -> None:
    """A purchase dated 04-30 may have happened any time that day: the horizon [04-01, 05-01) is observed.
    Taken as midnight of 04-30, the last day was lost and the row left unlabelled."""
    tables, label = _inactivity_until(con, tmp_path, [T("2024-03-20"), T("2024-04-30")])
    assert tables.window.date_only and tables.window.observed_until == T("2024-05-01")
    assert label == {"a": 0}
    # with times of day, what is observed ends at the last event: the horizon runs past it
    tables, label = _inactivity_until(con, tmp_path, [T("2024-03-20"), T("2024-04-30 18:00")])
    assert not tables.window.date_only and tables.window.observed_until == T("2024-04-30 18:00")
    assert label == {"a": None}


def test_observed_until_in_the_spec_decides_which_horizons_are_known(con, tmp_path) -> None:
    """An extract taken after the last purchase: the spec says until when behaviour is known."""
    _, label = _inactivity_until(con, tmp_path, [T("2024-03-20")])  # no purchase in April: not yet known
    assert label == {"a": None}
    tables, label = _inactivity_until(con, tmp_path, [T("2024-03-20")], observed_until="2024-04-30")
    assert tables.window.observed_until == T("2024-05-01")  # a date: through the end of that day
    assert label == {"a": 1}
    tables, label = _inactivity_until(con, tmp_path, [T("2024-03-20")], observed_until="2024-04-30T12:00:00")
    assert tables.window.observed_until == T("2024-04-30 12:00") and label == {"a": None}
