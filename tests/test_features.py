from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnml.config import Settings, repo_root
from churnml.data import ContractTables, load_dataset
from churnml.engine import connect
from churnml.features.batch import latest_date, scoring_rows, training_table
from churnml.features.btyd import BgNbd
from churnml.features.catalogue import build_catalogue, catalogue_frame
from churnml.features.engine import _side_session, build_features
from churnml.features.inference import infer_feature_set
from churnml.features.online import features_from_frames, load_contract_frames
from churnml.features.sets import FeatureSet
from churnml.schema import EVENT_TYPES, EventValue
from churnml.simulate import SimulationConfig, simulate
from churnml.spec import load_spec

T = pd.Timestamp
AS_OF = T("2024-05-01")


def _events(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "event_type", "value", "user_id"])


HAND_EVENTS = _events(
    [
        # logins: 2 in the last 7 days, 3 in the last 30 (all after 04-01), 1 in the 30 days before, 1 older
        ("a", T("2024-04-28 09:00"), "login", None, "u1"),
        ("a", T("2024-04-30 18:00"), "login", None, "u2"),
        ("a", T("2024-04-10 10:00"), "login", None, "u1"),
        ("a", T("2024-03-20 10:00"), "login", None, "u3"),
        ("a", T("2024-01-15 10:00"), "login", None, "u1"),
        # tickets with CSAT 2 and 4 in the last 30 days, one with 5 at 60-90 days
        ("a", T("2024-04-20 12:00"), "support_ticket", 2.0, None),
        ("a", T("2024-04-25 12:00"), "support_ticket", 4.0, None),
        ("a", T("2024-02-15 12:00"), "support_ticket", 5.0, None),
        # NPS answers: the latest (before the date) is a detractor
        ("a", T("2024-02-01 08:00"), "nps_response", 9.0, None),
        ("a", T("2024-04-29 08:00"), "nps_response", 5.0, None),
        # on and after the date: must be invisible
        ("a", T("2024-05-01 00:00"), "login", None, "u9"),
        ("a", T("2024-05-03 00:00"), "nps_response", 10.0, None),
    ]
)
HAND_CUSTOMERS = pd.DataFrame(
    {
        "customer_id": ["a"],
        "signup_date": [T("2024-01-10")],
        "plan": ["pro"],
        "segment": ["SMB"],
        "mrr": [999.0],
    }
)
HAND_SUBSCRIPTIONS = pd.DataFrame(
    {
        "customer_id": ["a", "a", "a"],
        "start": [T("2024-01-10"), T("2024-03-25"), T("2024-05-02")],
        "end": [T("2024-03-25"), T("2024-05-02"), None],
        "mrr": [300.0, 200.0, 100.0],
        "plan": ["business", "team", "starter"],
        "seats": [10.0, 8.0, 4.0],
    }
)
NPS, CSAT = EVENT_TYPES["nps_response"].values, EVENT_TYPES["support_ticket"].values
HAND_SET = FeatureSet(
    event_types=("login", "nps_response", "support_ticket"),
    event_values=(("nps_response", NPS), ("support_ticket", CSAT)),
)


def test_hand_computed_features() -> None:
    got = features_from_frames(HAND_SET, AS_OF, HAND_EVENTS, HAND_CUSTOMERS, HAND_SUBSCRIPTIONS).iloc[0]
    expected = {
        "login_count_7d": 2, "login_count_30d": 3, "login_count_90d": 4,
        "login_count_trend_ratio": 3.0, "login_count_trend_delta": 2, "login_active_days_30d": 3,
        "days_since_last_login": (AS_OF - T("2024-04-30 18:00")) / pd.Timedelta(days=1),
        "support_ticket_count_30d": 2, "support_ticket_count_90d": 3,
        "support_ticket_score_mean_30d": 3.0, "support_ticket_score_mean_90d": 11 / 3,
        "support_ticket_score_min_90d": 2.0, "support_ticket_score_last": 4.0,
        "days_since_last_support_ticket_score": 6,  # whole days back to 04-25
        "nps_response_score_last": 5.0, "days_since_last_nps_response_score": 2, "nps_response_count_90d": 2,
        "tenure_days": (AS_OF - T("2024-01-10")).days,
        "active_days_30d": 6, "active_users_30d": 2,
        # subscriptions as of the date: the row started 03-25 (the 05-02 downgrade is in the future)
        "mrr": 200.0, "seats": 8.0, "seats_used_ratio": 2 / 8,
        "mrr_change_90d": 200.0 - 300.0,  # 90 days before (02-01) the first row applied
        "days_to_renewal": (T("2024-05-10") - AS_OF).days,  # monthly anniversaries of 01-10
    }  # fmt: skip
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    assert got["plan"] == "team" and got["segment"] == "SMB"
    # no ticket in the 30 days before the last 30: the trend ratio is undefined (NaN), not a guess
    assert np.isnan(got["support_ticket_count_trend_ratio"]) and got["support_ticket_count_trend_delta"] == 2
    assert list(got.index[2:]) == HAND_SET.columns


def test_two_subscriptions_starting_at_once_resolve_the_same_way_whatever_the_row_order() -> None:
    """The subscription in force is the latest started; on a tie the larger MRR (then seats, plan) wins,
    a rule every engine applies alike (an ASOF join would pick either)."""
    extra = {"customer_id": ["a"], "start": [T("2024-03-25")], "end": [T("2024-05-02")], "mrr": [250.0],
             "plan": ["growth"], "seats": [9.0]}  # fmt: skip
    tie = pd.concat([HAND_SUBSCRIPTIONS, pd.DataFrame(extra)], ignore_index=True)
    for order in (tie, tie.iloc[::-1], tie.sample(frac=1.0, random_state=1)):
        got = features_from_frames(HAND_SET, AS_OF, HAND_EVENTS, HAND_CUSTOMERS, order)
        assert (got.loc[0, "mrr"], got.loc[0, "seats"], got.loc[0, "plan"]) == (250.0, 9.0, "growth")


def test_many_subscriptions_and_dates_per_customer_stay_linear() -> None:
    """One subscription row per billing period and monthly dates over years: each row must join the one
    subscription in force, not every earlier one (R x S / 2 pairs per customer ran out of memory)."""
    n, periods = 1500, 100
    ids = [f"c{i}" for i in range(n)]
    starts = pd.date_range("2015-01-01", periods=periods, freq="MS")
    subs = pd.DataFrame({"customer_id": np.repeat(ids, periods), "start": np.tile(starts, n), "end": pd.NaT,
                         "mrr": np.tile(np.arange(periods, dtype=float), n), "plan": "team", "seats": 5.0})  # fmt: skip
    events = pd.DataFrame({"customer_id": ids, "timestamp": T("2014-12-01 12:00"), "event_type": "login",
                           "value": np.nan, "user_id": "u1"})  # fmt: skip
    dates = pd.date_range("2015-02-01", periods=periods, freq="MS")
    rows = pd.DataFrame({"customer_id": np.repeat(ids, periods), "observation_date": np.tile(dates, n)})
    con = connect(Settings(duckdb_memory_limit="160MB", duckdb_threads=1), spill=False)
    try:
        load_contract_frames(con, None, events, subs)
        got = build_features(ContractTables(con), rows, FeatureSet(("login",)))
    finally:
        con.close()
    # at the k-th date the k-th period is in force (the latest started before it); mrr is that index
    in_force = starts.searchsorted(dates, side="left") - 1
    before = starts.searchsorted(dates - pd.Timedelta(days=90), side="left") - 1
    np.testing.assert_array_equal(got["mrr"].to_numpy(), np.tile(in_force, n).astype(float))
    change = np.where(before >= 0, in_force - before, np.nan)
    np.testing.assert_array_equal(got["mrr_change_90d"].to_numpy(), np.tile(change, n))


def test_the_online_path_reads_frames_in_any_row_order_and_memory_layout() -> None:
    expected = features_from_frames(HAND_SET, AS_OF, HAND_EVENTS, HAND_CUSTOMERS, HAND_SUBSCRIPTIONS)
    reversed_views = (HAND_EVENTS.iloc[::-1], HAND_CUSTOMERS.iloc[::-1], HAND_SUBSCRIPTIONS.iloc[::-1])
    got = features_from_frames(HAND_SET, AS_OF, *reversed_views)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_rows_must_be_dates_and_name_their_columns() -> None:
    with pytest.raises(ValueError, match="observation_date must be a date"):
        features_from_frames(HAND_SET, T("2024-05-01 12:00"), HAND_EVENTS, HAND_CUSTOMERS)
    from churnml.engine import connect

    with (
        connect(spill=False) as con,
        pytest.raises(ValueError, match=r"missing column\(s\) \['observation_date'\]"),
    ):
        build_features(ContractTables(con), pd.DataFrame({"customer_id": ["a"]}), HAND_SET)


def test_feature_set_round_trips_as_json() -> None:
    fs = FeatureSet(("login", "x-y", "nps_response"), (("x-y", EventValue("amount")), ("nps_response", NPS)),
                    ("industry", "size"), ("industry",), term_months=12)  # fmt: skip
    assert FeatureSet.from_json(fs.to_json()) == fs
    assert (
        "x_y_amount_last" in fs.columns
        and "attr_size" in fs.columns
        and "nps_response_score_last" in fs.columns
    )
    with pytest.raises(ValueError, match="collide"):
        FeatureSet(("a-b", "a_b"))
    older = {**json.loads(fs.to_json()), "definition": 2}
    with pytest.raises(ValueError, match="feature definitions 2.*retrain"):
        FeatureSet.from_json(json.dumps(older))


def test_a_new_event_type_gets_features_and_descriptions_without_code() -> None:
    events = pd.concat(
        [HAND_EVENTS, _events([("a", T("2024-04-15"), "webinar_attended", 45.0, None)])], ignore_index=True
    )
    fs = FeatureSet(
        event_types=(*HAND_SET.event_types, "webinar_attended"),
        event_values=(*HAND_SET.event_values, ("webinar_attended", EventValue("amount"))),
    )
    got = features_from_frames(fs, AS_OF, events, HAND_CUSTOMERS).iloc[0]
    assert got["webinar_attended_count_30d"] == 1 and got["webinar_attended_amount_last"] == 45.0
    default = {i.name: i for i in build_catalogue(fs)}
    assert (
        default["webinar_attended_count_30d"].description
        == "Number of webinar attended events in the last 30 days."
    )


def test_catalogue_describes_every_column() -> None:
    fs = FeatureSet(
        ("login", "payment_failed"), (("payment_failed", EventValue("amount")),), ("industry",), ("industry",)
    )
    frame = catalogue_frame(build_catalogue(fs))
    assert frame["name"].tolist() == fs.columns
    assert frame["description"].str.len().min() > 10 and frame["unit"].notna().all()
    by_name = frame.set_index("name")
    assert (
        by_name.loc["login_count_30d", "actionable"] and by_name.loc["payment_failed_count_90d", "actionable"]
    )
    assert not by_name.loc["tenure_days", "actionable"] and not by_name.loc["segment", "actionable"]
    assert by_name.loc["days_since_last_login", "unit"] == "days"


# ----------------------------------------------------------------------------- one definition, three uses


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory):
    from churnml.config import Settings
    from churnml.engine import connect

    out = tmp_path_factory.mktemp("sim")
    simulate(SimulationConfig(customers=600, months=10, seed=11), out, workers=1)
    con = connect(Settings(home=out, duckdb_memory_limit="1GB", duckdb_threads=2))
    spec = load_spec(out / "spec.yaml")
    yield load_dataset(con, spec), spec, out
    con.close()


def test_training_batch_and_online_paths_give_identical_features(sim) -> None:
    tables, spec, out = sim
    table, fs = training_table(tables, spec)
    date = table["observation_date"].sort_values().unique()[-2]
    train_rows = table[table["observation_date"] == date].set_index("customer_id")
    # batch scoring: the active customers at that date
    batch = build_features(tables, scoring_rows(tables, spec, pd.Timestamp(date)), fs).set_index(
        "customer_id"
    )
    assert set(train_rows.index) <= set(batch.index)
    pd.testing.assert_frame_equal(
        batch.loc[train_rows.index, fs.columns], train_rows[fs.columns], check_exact=True
    )
    # online: each customer's raw behaviour (everything, including what happens after the date)
    customers = pd.read_parquet(out / "customers.parquet")
    events = pd.read_parquet(out / "events.parquet")
    subs = pd.read_parquet(out / "subscriptions.parquet").rename(
        columns={"start_date": "start", "end_date": "end"}
    )
    picked = list(train_rows.index[:25])
    online = features_from_frames(
        fs,
        pd.Timestamp(date),
        events[events["customer_id"].isin(picked)].astype(
            {"customer_id": str, "event_type": str, "user_id": "string"}
        ),
        customers[customers["customer_id"].isin(picked)][
            ["customer_id", "signup_date", "plan", "segment", "mrr", "csm_owner", "industry", "country"]
        ],
        subs[subs["customer_id"].isin(picked)],
    ).set_index("customer_id")
    pd.testing.assert_frame_equal(
        online.loc[picked, fs.columns], train_rows.loc[picked, fs.columns], check_exact=True
    )


def test_latest_scoring_date_sees_all_data(sim) -> None:
    tables, spec, _ = sim
    last = tables.con.execute('SELECT max("timestamp") FROM events').fetchall()[0][0]
    assert latest_date(tables) == pd.Timestamp(last).normalize() + pd.Timedelta(days=1)
    rows = scoring_rows(tables, spec, latest_date(tables))
    open_subs = tables.con.execute(
        'SELECT count(DISTINCT customer_id) FROM subscriptions WHERE "end" IS NULL'
    ).fetchall()[0][0]
    assert len(rows) == open_subs


def test_infer_feature_set_reads_types_and_attributes(sim) -> None:
    tables, spec, _ = sim
    fs = infer_feature_set(tables, spec)
    assert "login" in fs.event_types and "login" not in fs.valued_types and "nps_response" in fs.valued_types
    # the simulator's spec declares each type's value: ids are counted as distinct, never summed
    assert fs.value("feature_use").meaning == "identifier" and fs.value("seat_change").meaning == "quantity"
    assert "feature_use_distinct_30d" in fs.columns and "feature_use_amount_sum_30d" not in fs.columns
    assert fs.attributes == ("industry", "country") and fs.categorical_attributes == ("industry", "country")


def test_infer_feature_set_reads_validations_statistics_or_the_events_alike(sim) -> None:
    tables, spec, _ = sim
    total = tables.con.execute("SELECT count(*) FROM events").fetchall()[0][0]
    assert sum(s.events for s in tables.event_stats.values()) == total  # validation's covers every event
    from_validation = infer_feature_set(tables, spec)
    fresh = ContractTables(tables.con)  # the same tables, statistics read from the events themselves
    assert fresh.event_stats == tables.event_stats and infer_feature_set(fresh, spec) == from_validation


def test_the_handle_describes_its_own_events_not_a_table_left_on_the_connection(con) -> None:
    con.execute(
        "CREATE TABLE event_volume AS SELECT DATE '2024-01-01' AS day, 'gone' AS event_type, 1 AS events, 1 AS valued"
    )
    tables = load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)
    fs = infer_feature_set(tables, load_spec(repo_root() / "training" / "specs" / "simulated.yaml"))
    assert fs.event_types == HAND_SET.event_types and fs.event_values == HAND_SET.event_values


def _hand_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": ["a", "a", "a"], "observation_date": [AS_OF, T("2024-04-01"), T("2024-03-01")]}
    )


def test_account_state_on_a_side_session_equals_one_session(settings: Settings) -> None:
    """With threads to spare the account query runs on a second session: same features as on one."""
    con = connect(settings)
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)
    con.execute("SET threads = 2")
    side = _side_session(con)
    assert side is not None  # the overlapped path is the one under test
    side.close()
    overlapped = build_features(ContractTables(con), _hand_rows(), HAND_SET)
    con.execute("SET threads = 1")
    assert _side_session(con) is None
    pd.testing.assert_frame_equal(
        overlapped, build_features(ContractTables(con), _hand_rows(), HAND_SET), check_exact=True
    )
    assert overlapped["mrr"].tolist() == [200.0, 200.0, 300.0] and overlapped["active_users_30d"].iloc[0] == 2
    con.close()


def test_temporary_contract_tables_stay_on_one_session(settings: Settings) -> None:
    """A second session cannot see another session's temporary tables, so none is opened for them."""
    con = connect(settings)
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)
    expected = build_features(ContractTables(con), _hand_rows(), HAND_SET)
    for table in ("customers", "events", "subscriptions"):
        con.execute(f"CREATE TEMP TABLE _{table} AS SELECT * FROM main.{table}")
        con.execute(f"DROP TABLE main.{table}")
        con.execute(f"ALTER TABLE _{table} RENAME TO {table}")
    con.execute("SET threads = 2")
    assert _side_session(con) is None
    pd.testing.assert_frame_equal(
        build_features(ContractTables(con), _hand_rows(), HAND_SET), expected, check_exact=True
    )
    con.close()


_OTHER_SUBSCRIPTIONS = HAND_SUBSCRIPTIONS.assign(mrr=1.0, seats=1.0)


def _in_an_open_transaction(con: duckdb.DuckDBPyConnection) -> None:
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, _OTHER_SUBSCRIPTIONS)
    con.begin()  # the hand data below is uncommitted: another session would read the other
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)


def _in_another_database(con: duckdb.DuckDBPyConnection) -> None:
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, _OTHER_SUBSCRIPTIONS)
    con.execute("ATTACH ':memory:' AS other")
    con.execute("USE other")  # a new session still starts in the first database
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)


def _shadowed_by_a_temporary_table(con: duckdb.DuckDBPyConnection) -> None:
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, _OTHER_SUBSCRIPTIONS)
    con.register("_subscriptions_frame", HAND_SUBSCRIPTIONS)
    con.execute("CREATE TEMP TABLE subscriptions AS SELECT * FROM _subscriptions_frame")


@pytest.mark.parametrize(
    "setup", [_in_an_open_transaction, _in_another_database, _shadowed_by_a_temporary_table]
)
def test_no_side_session_when_it_would_read_other_tables(settings: Settings, setup) -> None:  # noqa: ANN001
    reference_con = connect(settings)
    load_contract_frames(reference_con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)
    reference_con.execute("SET threads = 1")
    reference = build_features(ContractTables(reference_con), _hand_rows(), HAND_SET)
    reference_con.close()
    con = connect(settings)
    con.execute("SET threads = 2")
    setup(con)
    assert _side_session(con) is None
    pd.testing.assert_frame_equal(
        build_features(ContractTables(con), _hand_rows(), HAND_SET), reference, check_exact=True
    )
    assert reference["mrr"].tolist() == [200.0, 200.0, 300.0]
    con.close()


def test_an_error_on_the_side_session_is_raised_and_leaves_the_connection_usable(settings: Settings) -> None:
    con = connect(settings)
    load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)
    con.execute("SET threads = 2")
    con.execute("ALTER TABLE subscriptions RENAME COLUMN seats TO licences")  # the account query needs seats
    with pytest.raises(duckdb.BinderException, match="seats"):
        build_features(ContractTables(con), _hand_rows(), HAND_SET)
    con.execute("ALTER TABLE subscriptions RENAME COLUMN licences TO seats")
    assert build_features(ContractTables(con), _hand_rows(), HAND_SET)["seats"].tolist() == [8.0, 8.0, 10.0]
    con.close()


# ----------------------------------------------------------------------------------------- leakage gate

_BASE = T("2024-03-01")
_event = st.tuples(
    st.sampled_from(["a", "b"]),
    st.integers(min_value=-200 * 24, max_value=60 * 24),  # hours around the observation date
    st.sampled_from(["login", "support_ticket", "nps_response"]),
    st.one_of(st.none(), st.integers(0, 10).map(float)),
    st.sampled_from([None, "u1", "u2", "u3"]),
)


def _frame(items: list[tuple]) -> pd.DataFrame:
    return _events([(c, _BASE + pd.Timedelta(hours=h), t, v, u) for c, h, t, v, u in items])


_LEAK_SET = FeatureSet(
    ("login", "nps_response", "support_ticket"),
    (("nps_response", NPS), ("support_ticket", CSAT)),
    btyd=(("login", BgNbd(0.5, 2.0, 0.8, 2.5)),),
    btyd_horizon_days=60,  # the fitted families too
)
_LEAK_CUSTOMERS = pd.DataFrame({"customer_id": ["a", "b"], "signup_date": [T("2023-06-01")] * 2})
_LEAK_SUBS = pd.DataFrame(
    {
        "customer_id": ["a", "b"],
        "start": [T("2023-06-01")] * 2,
        "mrr": [100.0, 50.0],
        "plan": ["x", "y"],
        "seats": [3.0, 5.0],
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(_event, min_size=1, max_size=25),
    future=st.lists(_event.map(lambda e: (e[0], abs(e[1]) % (60 * 24), *e[2:])), min_size=1, max_size=15),
    mutate=st.booleans(),
)
def test_events_at_or_after_the_date_change_no_feature(history, future, mutate) -> None:
    before = _frame(history)
    base = features_from_frames(_LEAK_SET, _BASE, before, _LEAK_CUSTOMERS, _LEAK_SUBS)
    after = pd.concat(
        [before, _frame(future)], ignore_index=True
    )  # future hours are >= 0: at or after the date
    if mutate:  # and rewrite whatever already sat at/after the date
        late = after["timestamp"] >= _BASE
        after.loc[late, "value"] = 7.0
        after.loc[late, "event_type"] = "support_ticket"
    future_subs = pd.concat(
        [
            _LEAK_SUBS,
            pd.DataFrame(
                {"customer_id": ["a"], "start": [_BASE], "mrr": [1.0], "plan": ["z"], "seats": [1.0]}
            ),
        ]
    )
    changed = features_from_frames(_LEAK_SET, _BASE, after, _LEAK_CUSTOMERS, future_subs)
    pd.testing.assert_frame_equal(base, changed, check_exact=True)


def test_the_leakage_check_can_fail() -> None:
    """Sanity: an event just before the date does change features (so the property above means something)."""
    history = _frame([("a", -30 * 24, "login", None, "u1")])
    base = features_from_frames(_LEAK_SET, _BASE, history, _LEAK_CUSTOMERS, _LEAK_SUBS)
    more = pd.concat([history, _frame([("a", -1, "login", None, "u2")])], ignore_index=True)
    changed = features_from_frames(_LEAK_SET, _BASE, more, _LEAK_CUSTOMERS, _LEAK_SUBS)
    assert changed.loc[0, "login_count_7d"] == base.loc[0, "login_count_7d"] + 1


@pytest.mark.shared_data
def test_completejourney_training_table_matches_source_counts(shared_data: Path, con) -> None:
    spec = load_spec(repo_root() / "training" / "specs" / "completejourney.yaml")
    spec = spec.with_source_path(shared_data / "completejourney")
    tables = load_dataset(con, spec)
    table, fs = training_table(tables, spec)
    per_date = table.groupby("observation_date")["churned"].agg(["size", "mean"])
    expected = {
        "2017-07-01": (2300, 6.35),
        "2017-08-01": (2317, 7.12),
        "2017-09-01": (2311, 7.05),
        "2017-10-01": (2314, 6.48),
    }
    for date, (size, rate) in expected.items():
        assert per_date.loc[T(date), "size"] == size
        assert round(100 * per_date.loc[T(date), "mean"], 2) == rate
    assert fs.event_types == ("coupon_redemption", "purchase")
    # every active household bought in the 90 days before the date: the population rule and the features agree
    assert (table["purchase_count_90d"] >= 1).all()
    assert table["days_since_last_purchase"].max() <= 90


# ----------------------------------------------------------------------------------------- edge cases

_EDGE_SET = FeatureSet(("login", "nps_response"), (("nps_response", NPS),))


def test_last_value_on_a_tied_timestamp_is_the_largest_whatever_the_row_order() -> None:
    tied = T("2024-04-20 10:00")
    for values in (
        [3.0, 9.0],
        [7.0, 1.0],
        [2.0, 8.0, 5.0],
        [-3.0, -0.5, -7.0],
        [0.0, -1e-9],
        [1e12, 1e12 + 1],
    ):
        rows = [("a", tied, "nps_response", v, None) for v in values]
        rows.append(("a", T("2024-04-01"), "nps_response", 4.0, None))
        rows.append(
            ("a", tied, "nps_response", None, None)
        )  # an event without a value never is the last value
        last = {features_from_frames(_EDGE_SET, T("2024-05-01"), _events(order)).loc[0, "nps_response_score_last"]
                for order in (rows, rows[::-1], rows[1:] + rows[:1])}  # fmt: skip
        assert last == {max(values)}, (values, last)


def test_last_value_is_the_latest_event_with_a_value_even_days_before_later_events() -> None:
    """A CSAT-like type: tickets without a score after the last scored one keep that score as the last
    value, and the value windows count only scored events."""
    rows = [
        ("a", T("2024-03-01 09:00"), "nps_response", 6.0, None),
        ("a", T("2024-04-10 09:00"), "nps_response", 2.0, None),
        ("a", T("2024-04-10 17:00"), "nps_response", None, None),
        ("a", T("2024-04-25 09:00"), "nps_response", None, None),
    ]
    got = features_from_frames(_EDGE_SET, T("2024-05-01"), _events(rows)).iloc[0]
    assert got["nps_response_score_last"] == 2.0 and got["days_since_last_nps_response_score"] == 21
    assert got["nps_response_count_30d"] == 3 and got["nps_response_active_days_30d"] == 2
    assert got["nps_response_score_mean_30d"] == 2.0 and got["nps_response_score_min_90d"] == 2.0
    assert got["nps_response_score_mean_90d"] == 4.0
    assert got["days_since_last_nps_response"] == pytest.approx(5 + 15 / 24)


def test_a_nan_value_is_no_value_on_the_batch_path_as_on_the_online_path() -> None:
    """Validation quarantines NaN, but a table loaded another way may hold one: DuckDB keeps NaN (and sorts
    it above every number) where pandas reads it as missing, so the value query drops it explicitly."""
    rows = [
        ("a", T("2024-04-10 09:00"), "nps_response", 3.0, None),
        ("a", T("2024-04-20 09:00"), "nps_response", 5.0, None),
    ]
    nan_row = ("a", T("2024-04-20 09:00"), "nps_response", float("nan"), None)
    online = features_from_frames(_EDGE_SET, T("2024-05-01"), _events([*rows, nan_row]))
    con = connect(Settings(duckdb_memory_limit="256MB", duckdb_threads=1), spill=False)
    try:
        load_contract_frames(con, None, _events(rows))
        con.execute(
            "INSERT INTO events VALUES ('a', TIMESTAMP '2024-04-20 09:00', 'nps_response', 'NaN'::DOUBLE, NULL)"
        )
        assert con.execute("SELECT count(*) FROM events WHERE isnan(value)").fetchone()[0] == 1
        rows_frame = pd.DataFrame({"customer_id": ["a"], "observation_date": [T("2024-05-01")]})
        batch = build_features(ContractTables(con), rows_frame, _EDGE_SET)
    finally:
        con.close()
    assert batch.loc[0, "nps_response_score_last"] == 5.0
    assert batch.loc[0, "nps_response_score_mean_30d"] == 4.0 and batch.loc[0, "nps_response_count_30d"] == 3
    pd.testing.assert_frame_equal(batch, online, check_exact=True)


def test_an_ancient_timestamp_of_another_customer_breaks_nothing() -> None:
    """Validation only refuses future timestamps, so a year-0 typo elsewhere must not stop the run."""
    con = connect(Settings(duckdb_memory_limit="256MB", duckdb_threads=1), spill=False)
    try:
        load_contract_frames(con, None, _events([("a", T("2024-04-15 10:00"), "login", None, "u1")]))
        con.execute("INSERT INTO events VALUES ('b', TIMESTAMP '-0044-03-15 12:00', 'login', NULL, 'u9')")
        rows = pd.DataFrame({"customer_id": ["a", "b"], "observation_date": [T("2024-05-01")] * 2})
        f = build_features(ContractTables(con), rows, _EDGE_SET)
    finally:
        con.close()
    assert f["login_count_30d"].tolist() == [1.0, 0.0] and f["login_count_total"].tolist() == [1.0, 1.0]
    assert f.loc[1, "days_since_last_login"] > 700_000


def test_daily_dates_count_users_like_one_date_at_a_time() -> None:
    """Dense dates take the other users query (distinct first); both must agree."""
    rng = np.random.default_rng(3)
    start = T("2024-03-01")
    events = _events([
        (f"c{rng.integers(3)}", start + pd.Timedelta(hours=int(h)), "login", None, f"u{rng.integers(6)}")
        for h in rng.integers(0, 24 * 75, 400)
    ])  # fmt: skip
    dates = pd.date_range("2024-04-01", periods=40, freq="D")
    con = connect(Settings(duckdb_memory_limit="256MB", duckdb_threads=1), spill=False)
    try:
        load_contract_frames(con, None, events)
        rows = pd.DataFrame(
            [(c, d) for d in dates for c in ("c0", "c1", "c2")], columns=["customer_id", "observation_date"]
        )
        daily = build_features(ContractTables(con), rows, _EDGE_SET)
        one = pd.concat(
            [
                build_features(ContractTables(con), rows[rows["observation_date"] == d], _EDGE_SET)
                for d in dates
            ]
        )
    finally:
        con.close()
    assert daily["active_users_30d"].gt(2).any()
    pd.testing.assert_frame_equal(daily.reset_index(drop=True), one.reset_index(drop=True), check_exact=True)


def test_active_days_are_the_same_whether_flagged_or_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`account_days` flags customer-days in a byte array, or sorts them when that array would be too big."""
    import churnml.features.runs as features

    rng = np.random.default_rng(3)
    n_keys, span, n_types = 7, 50, 4
    key = np.sort(
        rng.integers(0, n_types * n_keys * span, 300)
    )  # sorted event keys (days repeat), some types empty
    key = key[(key // (n_keys * span)) != 2]
    expected = np.unique(key % (n_keys * span))
    flagged = features.account_days(key, n_keys, span)
    monkeypatch.setattr(features, "DAY_FLAGS_MAX", 0)
    sorted_ = features.account_days(key.copy(), n_keys, span)
    np.testing.assert_array_equal(flagged, expected)
    np.testing.assert_array_equal(sorted_, expected)
    assert features.account_days(np.empty(0, np.int64), n_keys, span).size == 0


# ----------------------------------------------------------------------------- values by their meaning

_MEANING_SET = FeatureSet(
    ("amt", "sc", "q", "few", "many", "login"),
    (("amt", EventValue("amount")), ("sc", EventValue("score", (0.0, 10.0))), ("q", EventValue("quantity")),
     ("few", EventValue("identifier")), ("many", EventValue("category"))),
)  # fmt: skip


def _random_valued_events(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 900
    kinds = rng.choice(["amt", "sc", "q", "few", "many", "login"], n)
    value = np.select(
        [kinds == "amt", kinds == "sc", kinds == "q", kinds == "few", kinds == "many"],
        [
            rng.gamma(2.0, 50.0, n).round(2),
            rng.integers(0, 11, n),
            rng.integers(-5, 6, n),
            rng.integers(1, 6, n),
            rng.integers(0, 200, n),
        ],  # fmt: skip
        np.nan,
    ).astype(float)
    value[rng.random(n) < 0.05] = np.nan  # some events carry no value
    when = T("2024-01-01") + pd.to_timedelta(rng.integers(0, 200 * 24, n), unit="h")
    return _events(list(zip(rng.choice(["a", "b", "c"], n), when, kinds, value, [None] * n, strict=True)))


def _brute_values(events: pd.DataFrame, customer: str, t: pd.Timestamp) -> dict[str, float]:
    """Every value feature of one row, straight from its definition."""
    out: dict[str, float] = {}
    for kind in ("amt", "sc", "q", "few", "many"):
        e = events[(events.customer_id == customer) & (events.event_type == kind) & (events.timestamp < t)]
        v = e[e.value.notna()].sort_values(["timestamp", "value"])

        def window(w: int | None, v: pd.DataFrame = v) -> pd.Series:
            return v.value if w is None else v.value[v.timestamp >= t - pd.Timedelta(days=w)]

        def count(w: int, e: pd.DataFrame = e) -> int:
            return int((e.timestamp >= t - pd.Timedelta(days=w)).sum())

        last = v.value.iloc[-1] if len(v) else np.nan
        if kind == "amt":
            for w in (30, 90):
                out[f"amt_amount_sum_{w}d"] = window(w).sum()
                out[f"amt_amount_mean_{w}d"] = window(w).mean() if len(window(w)) else np.nan
            out |= {"amt_amount_last": last, "amt_amount_sum_total": window(None).sum()}
        elif kind == "sc":
            for w in (30, 90):
                out[f"sc_score_mean_{w}d"] = window(w).mean() if len(window(w)) else np.nan
            out["sc_score_min_90d"] = window(90).min() if len(window(90)) else np.nan
            out["sc_score_last"] = last
            out["days_since_last_sc_score"] = (
                (t - v.timestamp.iloc[-1].normalize()).days if len(v) else np.nan
            )
        elif kind == "q":
            out |= {"q_net_30d": window(30).sum(), "q_net_90d": window(90).sum(), "q_net_total": window(None).sum(),
                    "q_last_change": last}  # fmt: skip
        else:
            out |= {f"{kind}_distinct_30d": window(30).nunique(), f"{kind}_distinct_90d": window(90).nunique(),
                    f"{kind}_distinct_total": window(None).nunique()}  # fmt: skip
        assert count(30) >= len(window(30))
    return out


def test_value_features_follow_their_meaning_on_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sums, means, lowest and latest scores with their age, net changes and distinct identifiers (few
    levels: a bitmask; many: sorted pairs, in chunks) equal a brute-force reading of their definitions."""
    import churnml.features.runs as runs

    monkeypatch.setattr(runs, "PAIRS_PER_CHUNK", 50)  # several chunks even on this small table
    events = _random_valued_events(5)
    dates = [T("2024-03-01"), T("2024-04-15"), T("2024-07-01"), T("2024-07-20")]
    rows = pd.DataFrame([(c, d) for c in "abc" for d in dates], columns=["customer_id", "observation_date"])
    con = connect(Settings(duckdb_memory_limit="256MB", duckdb_threads=1), spill=False)
    try:
        load_contract_frames(con, None, events)
        batch = build_features(ContractTables(con), rows, _MEANING_SET)
    finally:
        con.close()
    for i, (c, d) in enumerate(rows.itertuples(index=False)):
        expected = _brute_values(events, c, d)
        for name, value in expected.items():
            assert batch.loc[i, name] == pytest.approx(value, nan_ok=True), (c, d, name)
        online = features_from_frames(_MEANING_SET, d, events[events.customer_id == c]).iloc[0]
        pd.testing.assert_series_equal(online[_MEANING_SET.columns], batch.loc[i, _MEANING_SET.columns],
                                       check_names=False, check_exact=True)  # fmt: skip
    assert batch["many_distinct_90d"].max() > 10  # the sorted-pairs path ran on real sets


def test_every_declared_family_is_computed_and_every_computation_declared() -> None:
    """The engine's outputs per value meaning are exactly the registry's families (both ways)."""
    import churnml.features.runs as runs
    from churnml.features.definitions import event_families

    events = runs.prepare_events(
        {"key": np.array([5, 7], np.int64), "timestamp": np.array([0, 1], "datetime64[us]")},
        {"key": np.array([5, 7], np.int64), "value": np.array([1.0, 2.0])},
    )
    base, rel, t_us = np.array([0]), np.array([10]), np.array([10 * 86_400_000_000])
    for meaning in ("none", "amount", "score", "quantity", "identifier", "category"):
        computed = set(runs.count_features(events, base, rel, t_us, (7, 30, 90)))
        computed |= set(runs.value_features(events, base, rel, meaning, span=20))
        declared = {(f.key, w) for f in event_families(meaning) for w in (f.windows or (None,))}
        assert computed == declared, (meaning, computed ^ declared)
    # the fitted families (BG/NBD), where a feature set carries their parameters
    from churnml.features.btyd import btyd_columns
    from churnml.features.definitions import fitted_families

    one = np.array([1.0])
    assert set(btyd_columns(BgNbd(0.5, 2.0, 0.8, 2.5), 60, one, one, one)) == {
        f.key for f in fitted_families()
    }
    assert {"login_p_alive", "login_expected_days_ahead"} <= set(_LEAK_SET.columns)


def test_a_definition_without_a_computation_stops_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A family declared but computed by nothing fails loudly (it used to become a column of NaN)."""
    import churnml.features.definitions as definitions
    import churnml.features.sets as sets
    from churnml.features.definitions import Family

    ghost = Family("ghost", "{s}_ghost", "event", "count", "Ghost.", "ghost", lambda i, r: None)
    monkeypatch.setattr(sets, "event_families", lambda meaning: [*definitions.event_families(meaning), ghost])
    assert "login_ghost" in HAND_SET.columns
    with pytest.raises(RuntimeError, match="login_ghost"):
        features_from_frames(HAND_SET, AS_OF, HAND_EVENTS, HAND_CUSTOMERS, HAND_SUBSCRIPTIONS)


def test_the_model_loads_without_the_feature_engine() -> None:
    """The feature set and catalogue live apart from the engine: loading a model (the MLflow pyfunc
    imports only `churnml.model`) imports no DuckDB, Ibis or NumPy feature engine."""
    import subprocess
    import sys

    code = ("import sys, churnml.model, churnml.mlflow_model\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('duckdb', 'ibis') or m.startswith("
            "('churnml.features.engine', 'churnml.features.runs', 'churnml.features.online'))]\n"
            "assert not heavy, heavy")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_columns_left_out_of_a_model_are_not_in_its_features(settings: Settings) -> None:
    """The leak guard's dropped columns are computed with their family but never handed to the model."""
    con = connect(settings)
    tables = load_contract_frames(con, HAND_CUSTOMERS, HAND_EVENTS, HAND_SUBSCRIPTIONS)
    full = build_features(tables, _hand_rows(), HAND_SET)
    left_out = ["login_count_7d", "mrr", "plan"]
    fs = HAND_SET.without(left_out)
    assert not set(left_out) & set(fs.columns) and fs.dropped == tuple(sorted(left_out))
    assert FeatureSet.from_json(fs.to_json()) == fs
    pd.testing.assert_frame_equal(
        build_features(tables, _hand_rows(), fs), full.drop(columns=left_out), check_exact=True
    )
    con.close()
