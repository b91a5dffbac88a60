from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from churnml.data import DataError, DataValidationError, load_dataset, validate_dataset
from churnml.spec import parse_spec
from tests.conftest import tiny_customers, tiny_events, tiny_spec_dict, tiny_subscriptions


def _issue(report, check: str):
    found = [i for i in report.issues if i.check == check]
    assert found, f"no {check!r} issue in {[i.check for i in report.issues]}"
    return found[0]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_clean_data_loads_contract_tables(write_tiny, con, tmp_path: Path, fmt: str) -> None:
    spec = write_tiny(fmt=fmt)
    report = load_dataset(con, spec, quarantine_dir=tmp_path / "q").report
    assert report.ok and not report.quarantined and not report.quarantine_files
    assert {t: s.clean for t, s in report.tables.items()} == {"customers": 3, "subscriptions": 3, "events": 6}
    events = con.execute('SELECT customer_id, "timestamp", event_type, value FROM events').df()
    # renamed event types, contract column names and types, sorted by customer and time
    assert list(events["event_type"]) == [
        "login",
        "support_ticket",
        "login",
        "login",
        "nps_response",
        "login",
    ]
    assert events.groupby("customer_id").size().to_dict() == {"a": 2, "b": 1, "c": 3}
    assert events.loc[1, "value"] == 4.0
    customers = con.execute("SELECT * FROM customers ORDER BY customer_id").df()
    assert list(customers.columns) == [
        "customer_id",
        "name",
        "signup_date",
        "plan",
        "segment",
        "mrr",
        "csm_owner",
    ]
    assert customers["name"].isna().all()  # optional, not in these files: empty, never made up
    assert customers["mrr"].tolist() == [300.0, 45.0, 1000.0]


@pytest.mark.parametrize("where", ["another database", "a transaction"])
def test_validation_loads_into_the_sessions_own_database_and_transaction(write_tiny, con, where: str) -> None:
    """Background work must not open a second session: it would see neither ``USE`` nor uncommitted tables."""
    spec = write_tiny(events=pd.concat([tiny_events(), tiny_events().iloc[:1]], ignore_index=True))
    if where == "another database":
        con.execute("ATTACH ':memory:' AS other")
        con.execute("USE other")
    else:
        con.begin()
    report = load_dataset(con, spec).report
    assert _issue(report, "duplicate_event").count == 1  # the row hashes were read and found the repeat
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 6
    if where == "another database":
        assert con.execute(
            "SELECT database_name FROM duckdb_tables() WHERE table_name = 'events'"
        ).fetchall() == [("other",)]


def test_missing_column_is_an_error_naming_table_and_column(write_tiny, con) -> None:
    spec = write_tiny(events=tiny_events().drop(columns=["ts"]))
    report = validate_dataset(con, spec)
    issue = _issue(report, "missing_column")
    assert issue.severity == "error"
    msg = issue.message()
    assert "events[0] (events.parquet)" in msg and "'ts'" in msg and "'timestamp'" in msg
    assert "['cust', 'kind', 'val']" in msg  # tells what the source does have
    # errors stop before any work: no contract tables were created
    assert (
        con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'events'").fetchall()[0][0] == 0
    )


def test_wrong_type_column_is_an_error_with_examples(write_tiny, con) -> None:
    customers = tiny_customers().astype({"mrr": str})
    customers["mrr"] = ["lots", "some", "45"]
    spec = write_tiny(customers=customers)
    report = validate_dataset(con, spec)
    issue = _issue(report, "wrong_type")
    assert issue.severity == "error" and issue.count == 2
    msg = issue.message()
    assert "customers (customers.parquet).mrr" in msg and "a number" in msg
    assert "2 of 3 values cannot be read" in msg and "'lots'" in msg and "row 1" in msg
    with pytest.raises(DataValidationError, match="mrr"):
        load_dataset(con, spec)


def test_impossible_source_type_is_an_error(write_tiny, con) -> None:
    events = tiny_events()
    events["ts"] = range(len(events))  # integers where a timestamp is expected
    report = validate_dataset(con, write_tiny(events=events))
    issue = _issue(report, "wrong_type")
    assert "column type is BIGINT" in issue.message() and "a date or timestamp" in issue.message()


def test_unparseable_and_future_timestamps_are_quarantined(write_tiny, con, tmp_path: Path) -> None:
    events = pd.concat([tiny_events()] * 3, ignore_index=True).astype({"ts": str})
    events.loc[0, "ts"] = "2024-02-31 10:00"
    events.loc[1, "ts"] = "2030-01-01 00:00"
    events["val"] = events.index.astype(float)  # no exact duplicates
    report = load_dataset(con, write_tiny(events=events, fmt="csv"), quarantine_dir=tmp_path / "q").report
    bad = _issue(report, "unparseable")
    future = _issue(report, "future_timestamp")
    assert (bad.severity, bad.count, bad.column) == ("quarantine", 1, "ts")
    assert "'2024-02-31 10:00'" in bad.message() and "row 1" in bad.message()
    assert (future.count, future.column) == (1, "ts")
    summary = report.tables["events"]
    assert (summary.rows, summary.clean, summary.quarantined) == (18, 16, 2)
    quarantined = pd.read_parquet(report.quarantine_files["events"])
    assert quarantined[["source_row", "issue", "timestamp"]].values.tolist() == [
        [1, "unparseable", "2024-02-31 10:00"],
        [2, "future_timestamp", "2030-01-01 00:00"],
    ]
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 16


def test_duplicate_customer_ids_are_an_error(write_tiny, con) -> None:
    customers = pd.concat([tiny_customers(), tiny_customers().iloc[[1]]], ignore_index=True)
    report = validate_dataset(con, write_tiny(customers=customers))
    issue = _issue(report, "duplicate_id")
    assert issue.severity == "error"
    assert "1 customer_id value(s) appear more than once (2 rows), e.g. 'b'" in issue.message()


def test_events_for_unknown_customers_are_quarantined(write_tiny, con, tmp_path: Path) -> None:
    events = pd.concat([tiny_events(), tiny_events().assign(cust="zz")], ignore_index=True)
    report = load_dataset(con, write_tiny(events=events), quarantine_dir=tmp_path / "q").report
    issue = _issue(report, "unknown_customer")
    assert (issue.count, issue.column) == (6, "cust") and "customer_id='zz'" in issue.message()
    assert con.execute("SELECT count(*) FROM events WHERE customer_id = 'zz'").fetchall()[0][0] == 0


def test_partial_customer_table_takes_ids_from_events(write_tiny, con) -> None:
    events = pd.concat([tiny_events(), tiny_events().assign(cust="zz")], ignore_index=True)
    spec = write_tiny(events=events, spec_changes=lambda s: s["customers"].update(complete=False))
    report = load_dataset(con, spec).report
    assert not report.quarantined
    assert con.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 4
    assert con.execute("SELECT count(*) FROM events WHERE customer_id = 'zz'").fetchall()[0][0] == 6


def test_negative_mrr_is_quarantined_in_customers_and_subscriptions(write_tiny, con) -> None:
    customers = tiny_customers()
    customers.loc[2, "mrr"] = -5.0
    subs = tiny_subscriptions()
    subs.loc[0, "mrr"] = -1.0
    spec = write_tiny(
        customers=customers,
        subscriptions=subs,
        spec_changes=lambda s: s["validation"].update(max_quarantine_fraction=1.0),
    )
    report = load_dataset(con, spec).report
    tables = sorted(i.table for i in report.issues if i.check == "negative_mrr")
    assert tables == ["customers (customers.parquet)", "subscriptions (subscriptions.parquet)"]
    assert con.execute("SELECT count(*) FROM customers WHERE mrr < 0").fetchall()[0][0] == 0
    # rows of the quarantined customer follow it to quarantine, under a reason that says why
    follow = [i for i in report.issues if i.check == "customer_quarantined"]
    assert sorted((i.table, i.count) for i in follow) == [
        ("events[0] (events.parquet)", 3),
        ("subscriptions (subscriptions.parquet)", 1),
    ]
    assert con.execute("SELECT count(*) FROM events WHERE customer_id = 'c'").fetchall()[0][0] == 0


def test_too_many_bad_rows_stop_the_run(write_tiny, con) -> None:
    events = tiny_events()
    events["cust"] = ["zz"] * 5 + ["a"]
    spec = write_tiny(
        events=events, spec_changes=lambda s: s["validation"].update(max_quarantine_fraction=0.2)
    )
    report = validate_dataset(con, spec)
    issue = _issue(report, "too_many_bad_rows")
    assert issue.severity == "error" and "5 of 6 rows (83.3%) are bad" in issue.message()
    assert "at most 20.0%" in issue.message()


def test_exact_duplicate_events_are_quarantined_but_lookalikes_kept(write_tiny, con) -> None:
    events = tiny_events()
    events["line"] = range(len(events))
    twin = events.iloc[[0]].copy()  # same line id: a true duplicate
    lookalike = events.iloc[[0]].assign(line=99)  # same contract values, different source row
    report = load_dataset(
        con, write_tiny(events=pd.concat([events, twin, lookalike], ignore_index=True))
    ).report
    issue = _issue(report, "duplicate_event")
    assert issue.count == 1
    assert con.execute("SELECT count(*) FROM events").fetchall()[0][0] == 7


def test_events_before_signup_are_quarantined(write_tiny, con) -> None:
    events = tiny_events()
    events.loc[2, "ts"] = pd.Timestamp("2023-06-01")  # b signed up 2024-01-15
    report = load_dataset(con, write_tiny(events=events)).report
    assert _issue(report, "before_signup").count == 1


def test_missing_required_values_and_non_finite_numbers(write_tiny, con) -> None:
    events = tiny_events()
    events.loc[0, "cust"] = None
    events.loc[1, "val"] = float("inf")
    report = load_dataset(con, write_tiny(events=events)).report
    assert _issue(report, "missing_value").column == "cust"
    assert _issue(report, "not_finite").column == "val"


def test_timestamp_formats_and_time_zones(write_tiny, con) -> None:
    events = tiny_events().astype({"ts": str})
    events["ts"] = ["02/01/2024 10:00", "03/02/2024 11:00", "20/01/2024 09:30", "02/02/2024 00:00",
                    "10/02/2024 00:00", "01/03/2024 00:00"]  # fmt: skip

    def change(s: dict) -> None:
        s["events"][0].update(timestamp_format="%d/%m/%Y %H:%M", timezone="America/New_York")

    load_dataset(con, write_tiny(events=events, fmt="csv", spec_changes=change))
    first = con.execute(
        "SELECT \"timestamp\" FROM events WHERE customer_id = 'a' ORDER BY 1 LIMIT 1"
    ).fetchall()[0][0]
    assert first == dt.datetime(2024, 1, 2, 15, 0)  # 10:00 in New York = 15:00 UTC


def test_mixed_offsets_in_text_timestamps_become_utc(write_tiny, con) -> None:
    events = tiny_events().astype({"ts": str})
    events.loc[0, "ts"] = "2024-01-02T10:00:00+02:00"
    events.loc[2, "ts"] = "2024-01-20T09:30:00Z"
    load_dataset(con, write_tiny(events=events, fmt="csv"))
    got = con.execute(
        "SELECT \"timestamp\" FROM events WHERE event_type = 'login' ORDER BY customer_id, 1"
    ).fetchall()
    assert got[0][0] == dt.datetime(2024, 1, 2, 8, 0) and got[1][0] == dt.datetime(2024, 1, 20, 9, 30)


def test_constant_event_type_and_dropped_types_are_counted(write_tiny, con) -> None:
    def change(s: dict) -> None:
        s["events"][0]["drop_event_types"] = ["nps_response"]

    report = load_dataset(con, write_tiny(spec_changes=change)).report
    summary = report.tables["events"]
    assert summary.dropped_event_types == {"nps_response": 1}
    assert summary.rows == summary.clean + summary.quarantined + sum(summary.dropped_event_types.values())


def test_no_events_left_is_a_warning_that_says_where_they_went(write_tiny, con) -> None:
    report = load_dataset(con, write_tiny()).report
    assert not [i for i in report.issues if i.check == "no_events"]  # some events: no warning

    empty = load_dataset(con, write_tiny(events=tiny_events().iloc[:0])).report
    issue = _issue(empty, "no_events")
    assert empty.ok and issue.severity == "warning" and "0 row(s) read" in issue.message()

    def drop_all(s: dict) -> None:
        renamed = s["events"][0]["event_types"]
        s["events"][0]["drop_event_types"] = sorted({renamed.get(k, k) for k in tiny_events()["kind"]})

    dropped = load_dataset(con, write_tiny(spec_changes=drop_all)).report
    assert dropped.tables["events"].clean == 0
    assert f"{len(tiny_events())} of dropped types" in _issue(dropped, "no_events").message()


def test_missing_and_truncated_files_are_data_errors(write_tiny, con, tmp_path: Path) -> None:
    spec = write_tiny()
    (tmp_path / "subscriptions.parquet").unlink()
    with pytest.raises(DataError, match=r"subscriptions \(subscriptions.parquet\): file .* does not exist"):
        validate_dataset(con, spec)
    spec = write_tiny()
    data = (tmp_path / "events.parquet").read_bytes()
    (tmp_path / "events.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"events\[0\] \(events.parquet\): cannot be read"):
        validate_dataset(con, spec)


def test_wrong_encoding_csv_is_a_data_error(write_tiny, con, tmp_path: Path) -> None:
    spec = write_tiny(fmt="csv")
    path = tmp_path / "events.csv"
    path.write_bytes(path.read_bytes().replace(b"login", "l\u00f6gin".encode("latin-1")))
    with pytest.raises(DataError, match=r"events\[0\] \(events.csv\)"):
        validate_dataset(con, spec)


def test_duckdb_database_source(tmp_path: Path, con) -> None:
    db = tmp_path / "source.duckdb"
    with duckdb.connect(str(db)) as src:
        for name, frame in [("c", tiny_customers()), ("e", tiny_events()), ("s", tiny_subscriptions())]:
            src.register("frame", frame)
            src.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
    data = tiny_spec_dict()
    data["source"] = {"kind": "duckdb", "path": str(db)}
    for role, table in [("customers", "c"), ("subscriptions", "s")]:
        data[role].pop("file")
        data[role]["table"] = table
    data["events"][0].pop("file")
    data["events"][0]["table"] = "e"
    report = load_dataset(con, parse_spec(data)).report
    assert report.tables["events"].clean == 6


def test_quarantine_points_at_the_exact_source_rows_in_a_multi_row_group_file(tmp_path: Path, con) -> None:
    """Row numbers must survive parallel scans: the quarantine names the right rows, the clean table the rest."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 400_000
    rng = np.random.default_rng(0)
    stamps = (pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 300 * 86400, n), unit="s")).astype(
        str
    )
    stamps = stamps.to_numpy().copy()
    bad_rows = np.sort(rng.choice(n, 25, replace=False))
    stamps[bad_rows] = "not a time"
    table = pa.table(
        {
            "cust": rng.integers(0, 500, n).astype(str),
            "ts": stamps,
            "kind": ["login"] * n,
            "seq": np.arange(n),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=40_000)
    spec = parse_spec(
        {
            "name": "big",
            "source": {"kind": "files", "path": str(tmp_path)},
            "events": [
                {
                    "file": "events.parquet",
                    "columns": {
                        "customer_id": "cust",
                        "timestamp": "ts",
                        "event_type": "kind",
                        "value": "seq",
                    },
                }
            ],
            "churn": {"definition": "inactivity", "activity_event_types": ["login"]},
            "observation": {"horizon_days": 30},
        }
    )
    report = load_dataset(con, spec, quarantine_dir=tmp_path / "q").report
    quarantined = pd.read_parquet(report.quarantine_files["events"])
    np.testing.assert_array_equal(quarantined["source_row"].to_numpy() - 1, bad_rows)
    np.testing.assert_array_equal(quarantined["value"].astype(int).to_numpy(), bad_rows)
    clean = con.execute("SELECT CAST(value AS BIGINT) FROM events").df().iloc[:, 0]
    assert len(clean) == n - 25 and not set(clean) & set(bad_rows)


def test_group_by_combines_source_rows_into_one_event(write_tiny, con) -> None:
    lines = pd.DataFrame(
        {
            "cust": ["a", "a", "a", "b"],
            "ts": pd.to_datetime(
                ["2024-01-05 10:00", "2024-01-05 10:01", "2024-01-09 12:00", "2024-01-20 09:00"]
            ),
            "kind": ["purchase"] * 4,
            "val": [2.5, 1.5, 4.0, 3.0],
            "basket": [1, 1, 2, 3],
        }
    )
    spec = write_tiny(events=lines, spec_changes=lambda s: s["events"][0].update(group_by=["basket"]))
    report = load_dataset(con, spec).report
    assert report.tables["events"].rows == 3
    got = con.execute('SELECT customer_id, "timestamp", value FROM events ORDER BY 1, 2').fetchall()
    assert got == [
        ("a", dt.datetime(2024, 1, 5, 10, 0), 4.0),
        ("a", dt.datetime(2024, 1, 9, 12, 0), 4.0),
        ("b", dt.datetime(2024, 1, 20, 9, 0), 3.0),
    ]


def _with_campaigns(tmp_path: Path, campaigns: pd.DataFrame, fmt: str = "parquet"):  # noqa: ANN202
    """Tiny spec plus a second event source whose timestamps live in a lookup table."""
    members = pd.DataFrame({"cust": ["a", "b", "c", "a"], "campaign": [1, 1, 2, 3]})
    for name, frame in (("members", members), ("campaigns", campaigns)):
        path = tmp_path / f"{name}.{fmt}"
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)

    def change(spec: dict) -> None:
        spec["events"].append(
            {
                "file": f"members.{fmt}",
                "event_type": "campaign",
                "lookup": {"file": f"campaigns.{fmt}", "keys": ["campaign"]},
                "columns": {"customer_id": "cust", "timestamp": "starts"},
            }
        )

    return change


_CAMPAIGNS = pd.DataFrame(
    {
        "campaign": [1, 2, 3],
        "starts": pd.to_datetime(["2024-02-10", "2024-02-05", "2024-02-20"]),
        "kind": ["A", "B", "A"],
    }
)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_lookup_joins_event_columns_from_another_table(write_tiny, con, tmp_path: Path, fmt: str) -> None:
    spec = write_tiny(fmt=fmt, spec_changes=_with_campaigns(tmp_path, _CAMPAIGNS, fmt))
    report = load_dataset(con, spec).report
    got = con.execute(
        "SELECT customer_id, \"timestamp\" FROM events WHERE event_type = 'campaign' ORDER BY 1, 2"
    ).fetchall()
    assert got == [
        ("a", dt.datetime(2024, 2, 10)),
        ("a", dt.datetime(2024, 2, 20)),
        ("b", dt.datetime(2024, 2, 10)),
        ("c", dt.datetime(2024, 2, 5)),
    ]
    assert report.tables["events"].clean == len(tiny_events()) + 4


def test_lookup_rows_without_a_match_are_quarantined_by_source_row(write_tiny, con, tmp_path: Path) -> None:
    spec = write_tiny(spec_changes=_with_campaigns(tmp_path, _CAMPAIGNS[_CAMPAIGNS["campaign"] != 3]))
    report = load_dataset(con, spec, quarantine_dir=tmp_path / "q").report
    issue = _issue(report, "missing_value")
    assert issue.column == "starts" and issue.count == 1 and "members.parquet" in issue.table
    assert issue.examples[0]["row"] == 4  # the fourth row of members.parquet (customer a, campaign 3)


@pytest.mark.parametrize(
    ("campaigns", "message"),
    [
        (
            pd.concat([_CAMPAIGNS, _CAMPAIGNS.iloc[:1]]),
            r"1 key value\(s\) of \['campaign'\] appear more than once",
        ),
        (_CAMPAIGNS.rename(columns={"campaign": "id"}), r"lookup key column\(s\) \['campaign'\] missing"),
        (_CAMPAIGNS.assign(cust="x"), r"column\(s\) \['cust'\] are in both tables"),
    ],
)
def test_bad_lookups_are_data_errors_naming_the_table(
    write_tiny, con, tmp_path: Path, campaigns: pd.DataFrame, message: str
) -> None:
    spec = write_tiny(spec_changes=_with_campaigns(tmp_path, campaigns))
    with pytest.raises(DataError, match=message) as err:
        load_dataset(con, spec)
    assert "campaigns.parquet" in str(err.value)


def test_lookup_and_group_by_cannot_be_combined() -> None:
    spec = tiny_spec_dict()
    spec["events"][0] |= {"group_by": ["basket"], "lookup": {"file": "x.parquet", "keys": ["k"]}}
    with pytest.raises(ValueError, match="'group_by' and 'lookup' cannot be combined"):
        parse_spec(spec, base_dir=Path("."))


def _more_csv_source() -> dict:
    """A second event source: ``more.csv`` with its own column names."""
    return {
        "file": "more.csv",
        "columns": {"customer_id": "customer", "timestamp": "when", "event_type": "what", "value": "amount"},
    }


@pytest.mark.parametrize("bad_in_second", [False, True])
def test_several_event_sources_load_in_order_and_quarantine_by_source_row(
    write_tiny, con, tmp_path: Path, bad_in_second: bool
) -> None:
    """Two sources (Parquet, then CSV text): rows keep their own numbering, and the clean table drops
    exactly the quarantined rows of the right source, whichever source they are in."""
    second = pd.DataFrame(
        {
            "customer": ["b", "c", "a", "b"],
            "when": ["2024-03-01 08:00", "2024-03-02 09:00", "2024-03-03 10:00", "2024-03-04 11:00"],
            "what": ["login", "feature_use", "login", "feature_use"],
            "amount": ["", "2.5", "", "7"],
        }
    )
    first = tiny_events()
    if bad_in_second:
        second.loc[2, "when"] = "not a time"  # row 3 of the CSV
    else:
        first.loc[1, "ts"] = pd.Timestamp("2030-01-01")  # row 2 of the Parquet: in the future
    second.to_csv(tmp_path / "more.csv", index=False)

    def add_source(spec: dict) -> None:
        spec["events"].append(_more_csv_source())

    report = load_dataset(
        con, write_tiny(events=first, spec_changes=add_source), quarantine_dir=tmp_path / "q"
    ).report
    (issue,) = report.quarantined
    source, row = ("events[1] (more.csv)", 3) if bad_in_second else ("events[0] (events.parquet)", 2)
    assert issue.table == source and issue.examples[0]["row"] == row
    quarantined = pd.read_parquet(tmp_path / "q" / "events.parquet")
    assert quarantined[["source", "source_row"]].values.tolist() == [[source, row]]
    loaded = con.execute(
        "SELECT customer_id, strftime(\"timestamp\", '%Y-%m-%d %H:%M'), event_type FROM events"
    ).fetchall()
    expected = [
        (c, t.strftime("%Y-%m-%d %H:%M"), {"ticket": "support_ticket", "nps": "nps_response"}.get(k, k))
        for i, (c, t, k) in enumerate(first[["cust", "ts", "kind"]].itertuples(index=False))
        if bad_in_second or i != 1
    ] + [
        (c, w, k)
        for i, (c, w, k) in enumerate(second[["customer", "when", "what"]].itertuples(index=False))
        if not bad_in_second or i != 2
    ]
    assert loaded == expected  # both sources, in source order, minus the one bad row
    assert report.tables["events"].clean == len(first) + len(second) - 1


def test_every_kind_of_bad_row_is_found_among_many_and_only_those_rows_leave(
    write_tiny, con, tmp_path: Path
) -> None:
    """Bad rows are searched for among candidates found on the loaded table (a failing value, a problem
    customer, a repeated row hash). Mixed defects in a multi-row-group file and a second source must all
    be found at their exact source rows, and the clean table must be the rest, in order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 3000
    events = pd.DataFrame(
        {
            "cust": np.array(["a", "b", "c"])[np.arange(n) % 3],
            "ts": pd.Timestamp("2024-03-01") + pd.to_timedelta(np.arange(n), unit="min"),
            "kind": np.where(np.arange(n) % 97 == 0, "nps", "login"),  # nps_response is dropped
            "val": np.arange(n, dtype=float),
        }
    )
    events.iloc[10] = events.iloc[20] = events.iloc[5]  # three identical rows: the 2nd and 3rd go
    events.iloc[194] = events.iloc[97]  # identical dropped rows: dropped, not quarantined
    events.loc[30, "cust"] = "zz"  # unknown customer
    events.loc[40, "cust"] = "q"  # its profile is quarantined (negative MRR)
    events.loc[51, ["cust", "ts"]] = ["a", pd.Timestamp("2023-06-01")]  # before a's signup
    events.loc[60, "val"] = float("inf")
    customers = pd.concat(
        [
            tiny_customers(),
            pd.DataFrame(
                {"id": ["q"], "signup": [pd.Timestamp("2024-01-01")], "plan": ["team"], "mrr": [-5.0]}
            ),
        ],
        ignore_index=True,
    )
    more = pd.DataFrame(
        {
            "customer": ["b", "c", "c"],
            "when": ["2024-06-01 08:00", "2024-06-02 09:00", "2024-06-02 09:00"],
            "what": ["login"] * 3,
            "amount": ["1", "2", "2"],
        }  # fmt: skip
    )
    more.to_csv(tmp_path / "more.csv", index=False)

    def change(spec: dict) -> None:
        spec["events"][0]["drop_event_types"] = ["nps_response"]
        spec["events"].append(_more_csv_source())

    spec = write_tiny(customers=customers, events=events, spec_changes=change)
    pq.write_table(
        pa.Table.from_pandas(events, preserve_index=False), tmp_path / "events.parquet", row_group_size=400
    )
    report = load_dataset(con, spec, quarantine_dir=tmp_path / "q").report

    first, second = "events[0] (events.parquet)", "events[1] (more.csv)"
    expected = {
        (first, 11, "duplicate_event"),
        (first, 21, "duplicate_event"),
        (first, 31, "unknown_customer"),
        (first, 41, "customer_quarantined"),
        (first, 52, "before_signup"),
        (first, 61, "not_finite"),
        (second, 3, "duplicate_event"),
    }
    quarantined = pd.read_parquet(report.quarantine_files["events"])
    assert set(quarantined[["source", "source_row", "issue"]].itertuples(index=False, name=None)) == expected
    gone = {row - 1 for source, row, _ in expected if source == first}
    dropped = set(np.flatnonzero(events["kind"].to_numpy() == "nps"))
    kept = [float(v) for i, v in enumerate(events["val"]) if i not in gone | dropped] + [1.0, 2.0]
    assert con.execute("SELECT value FROM events").df()["value"].tolist() == kept
    summary = report.tables["events"]
    assert (summary.quarantined, summary.dropped_event_types) == (7, {"nps_response": len(dropped)})


@pytest.mark.parametrize("name", ["_part", "ROWID", "src_plan"])
def test_attributes_named_like_validation_helper_columns_are_an_error(write_tiny, con, name: str) -> None:
    """Validation keeps helper columns (row numbers, flags, raw text) next to the source's own; an attribute
    of the same name would be read in their place."""
    customers = tiny_customers().assign(**{name: ["x", "y", "z"]})
    spec = write_tiny(customers=customers, spec_changes=lambda s: s["customers"].update(attributes=[name]))
    issue = _issue(validate_dataset(con, spec), "attribute_clash")
    assert issue.severity == "error" and issue.column == name and "rename it" in issue.message()


def test_identical_rows_in_two_sources_are_not_duplicates(write_tiny, con, tmp_path: Path) -> None:
    """Exact duplicates are looked for within a source: the same row in two exports is two events."""
    events = pd.concat([tiny_events(), tiny_events().iloc[[3]]], ignore_index=True)  # row 7 repeats row 4

    def change(spec: dict) -> None:
        spec["events"].append({**spec["events"][0], "file": "more.parquet"})

    spec = write_tiny(events=events, spec_changes=change)
    events.to_parquet(tmp_path / "more.parquet", index=False)
    report = load_dataset(con, spec).report
    assert [(i.table, i.count, i.examples[0]["row"]) for i in report.quarantined] == [
        ("events[0] (events.parquet)", 1, 7),
        ("events[1] (more.parquet)", 1, 7),
    ]
    assert report.tables["events"].clean == 2 * (len(events) - 1)


def test_group_by_takes_the_smallest_of_other_columns_on_every_read(write_tiny, con) -> None:
    """Lines of one event that disagree on a column give its smallest value, so the loaded event and a
    bad event's report (validation reads the source again for it) show the same thing."""
    lines = pd.DataFrame(
        {
            "cust": ["a", "a", "b", "b"],
            "ts": pd.to_datetime(
                ["2024-01-05 10:00", "2024-01-05 10:01", "2030-01-01 00:00", "2030-01-01 00:00"]
            ),
            "kind": ["purchase", "browse", "purchase", "browse"],
            "val": [2.5, 1.5, 4.0, 3.0],
            "basket": [1, 1, 2, 2],
        }
    )
    spec = write_tiny(events=lines, spec_changes=lambda s: s["events"][0].update(group_by=["basket"]))
    report = load_dataset(con, spec).report
    assert con.execute("SELECT customer_id, event_type, value FROM events").fetchall() == [
        ("a", "browse", 4.0)
    ]
    (issue,) = report.quarantined  # basket 2 is in the future
    assert issue.check == "future_timestamp" and issue.examples[0]["event_type"] == "browse"


def test_a_source_keeps_its_exact_duplicates_when_the_spec_says_they_are_legitimate(
    write_tiny, con, tmp_path: Path
) -> None:
    """Two same-day orders of one amount in a date-only log are two orders: ``duplicates: keep`` keeps
    them, and they are counted either way. The other source still quarantines its repeats."""
    events = tiny_events()
    second = pd.DataFrame({"customer": ["a", "a", "c"], "when": ["2024-02-05"] * 3, "what": ["purchase"] * 3,
                           "amount": ["9.5", "9.5", "3"]})  # fmt: skip
    second.to_csv(tmp_path / "more.csv", index=False)
    doubled = pd.concat([events, events.iloc[[1]]], ignore_index=True)

    def two_sources(keep: bool):  # noqa: ANN202
        def change(spec: dict) -> None:
            spec["events"].append(_more_csv_source() | ({"duplicates": "keep"} if keep else {}))

        return write_tiny(events=doubled, spec_changes=change)

    report = load_dataset(con, two_sources(keep=False)).report
    assert {(i.table, i.check, i.count) for i in report.quarantined} == {
        ("events[0] (events.parquet)", "duplicate_event", 1), ("events[1] (more.csv)", "duplicate_event", 1),
    }  # fmt: skip
    assert "set `duplicates: keep` on this source" in _issue(report, "duplicate_event").message()
    assert report.tables["events"].clean == 6 + 2

    report = load_dataset(con, two_sources(keep=True)).report
    (quarantined,) = report.quarantined
    assert quarantined.table == "events[0] (events.parquet)" and quarantined.check == "duplicate_event"
    kept = _issue(report, "duplicate_kept")
    assert kept.severity == "warning" and kept.table == "events[1] (more.csv)" and kept.count == 1
    assert "1 exact duplicate row(s) kept (duplicates: keep)" in kept.message()
    summary = report.tables["events"]
    assert (summary.rows, summary.clean, summary.quarantined, summary.duplicates_kept) == (10, 9, 1, 1)
    assert "1 exact duplicates kept" in report.render()
    orders = con.execute("SELECT count(*) FROM events WHERE event_type = 'purchase' AND customer_id = 'a'")
    assert orders.fetchall()[0][0] == 2
