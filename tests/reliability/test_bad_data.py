"""A corpus of broken inputs for every contract table: each ends in a clear error or a counted
quarantine (or warning), never a crash and never a silent drop (rows read = clean + quarantined)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from churnml.data import DataError, ValidationReport, validate_dataset
from churnml.data.checks import SPIKE_RATIO
from churnml.spec import DatasetSpec
from tests.conftest import tiny_customers, tiny_events, tiny_subscriptions

TABLES = ("customers", "events", "subscriptions")
FRAMES = {"customers": tiny_customers, "events": tiny_events, "subscriptions": tiny_subscriptions}


@dataclass
class Case:
    name: str
    build: Callable[[Callable[..., DatasetSpec], Path], DatasetSpec]
    error: str | None = None  # regex of the DataError / hard error message
    check: str | None = None  # the quarantine or warning check expected
    count: int = 0


def _truncate(table: str) -> Callable:
    def build(write, folder: Path) -> DatasetSpec:
        spec = write()
        path = folder / f"{table}.parquet"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return spec

    return build


def _bad_encoding(table: str) -> Callable:
    def build(write, folder: Path) -> DatasetSpec:
        spec = write(fmt="csv")
        path = folder / f"{table}.csv"
        raw = path.read_bytes()
        path.write_bytes(raw.replace(b"\n", "\n\u00e9\u00e8\u00ff,".encode("latin-1"), 1))
        return spec

    return build


def _shuffled(table: str) -> Callable:
    def build(write, folder: Path) -> DatasetSpec:
        frame = FRAMES[table]()
        return write(**{table: frame[list(reversed(frame.columns))]}, fmt="csv")

    return build


def _events(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable:
    return lambda write, folder: write(events=change(tiny_events()))


def _duplicated(e: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([e, e.iloc[[0, 1]]], ignore_index=True)


def _future(e: pd.DataFrame) -> pd.DataFrame:
    e.loc[1, "ts"] = pd.Timestamp("2031-01-01")
    return e


def _before_signup(e: pd.DataFrame) -> pd.DataFrame:
    e.loc[0, "ts"] = pd.Timestamp("2020-01-01")
    return e


def _mixed_zones(write, folder: Path) -> DatasetSpec:
    e = tiny_events().astype({"ts": str})
    e.loc[0, "ts"] = "2024-01-02T10:00:00+02:00"
    e.loc[1, "ts"] = "2024-02-03T11:00:00-05:00"
    e.loc[2, "ts"] = "2024-01-20T09:30:00Z"
    return write(events=e, fmt="csv")


def _volume_spike(write, folder: Path) -> DatasetSpec:
    days = pd.date_range("2024-01-02", "2024-03-30", freq="D")
    minutes = pd.to_timedelta([i % 20 for i in range(20 * len(days))], unit="min")
    normal = pd.DataFrame(
        {"cust": "a", "ts": days.repeat(20) + pd.Timedelta(hours=9) + minutes, "kind": "login", "val": None}
    )
    spike = pd.DataFrame(
        {"cust": "c", "ts": [pd.Timestamp("2024-03-05 12:00")] * 20 * 11, "kind": "login", "val": None}
    )
    spike["ts"] = spike["ts"] + pd.to_timedelta(range(len(spike)), unit="s")  # distinct rows, not duplicates
    return write(events=pd.concat([normal, spike], ignore_index=True))


def _end_before_start(write, folder: Path) -> DatasetSpec:
    s = tiny_subscriptions()
    s.loc[1, "end"] = pd.Timestamp("2023-12-01")
    return write(subscriptions=s)


def _negative_mrr(write, folder: Path) -> DatasetSpec:
    c = tiny_customers()
    c.loc[0, "mrr"] = -10.0
    return write(customers=c)


def _duplicate_customers(write, folder: Path) -> DatasetSpec:
    c = tiny_customers()
    return write(customers=pd.concat([c, c.iloc[[1]]], ignore_index=True))


def _missing_column(write, folder: Path) -> DatasetSpec:
    return write(events=tiny_events().drop(columns=["ts"]))


CASES = [
    *(Case(f"truncated {t}", _truncate(t), error=rf"{t}(\[0\])? \({t}.parquet\): cannot be read") for t in TABLES),
    *(Case(f"wrong encoding {t}", _bad_encoding(t), error=rf"{t}(\[0\])? \({t}.csv\)") for t in TABLES),
    *(Case(f"shuffled columns {t}", _shuffled(t)) for t in TABLES),
    Case("duplicated events", _events(_duplicated), check="duplicate_event", count=2),
    Case("future-dated events", _events(_future), check="future_timestamp", count=1),
    Case("events before signup", _events(_before_signup), check="before_signup", count=1),
    Case("mixed time zones", _mixed_zones),
    Case("10x volume spike", _volume_spike, check="volume_spike", count=1),
    Case("subscription ends before it starts", _end_before_start, check="end_before_start", count=1),
    Case("negative MRR", _negative_mrr, check="negative_mrr", count=1),
    Case("duplicate customer ids", _duplicate_customers, error=r"customers .*customer_id value\(s\) appear more than once"),
    Case("missing required column", _missing_column, error=r"events.*ts|timestamp"),
]  # fmt: skip


def _conserved(report: ValidationReport, con) -> None:  # noqa: ANN001
    for t in report.tables.values():
        dropped = sum(t.dropped_event_types.values())
        assert t.rows == t.clean + t.quarantined + dropped, f"{t.table}: rows went missing: {t}"
        if t.rows:  # a table read from a file: its clean rows are what the contract table holds
            n = con.execute(f"SELECT count(*) FROM {t.table}").fetchall()[0][0]
            assert n == t.clean, f"{t.table}: {n} rows in the table, report says {t.clean} clean"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input_ends_in_a_clear_error_or_a_counted_quarantine(
    case: Case, write_tiny, con, tmp_path
) -> None:
    try:
        spec = case.build(write_tiny, tmp_path)
        report = validate_dataset(con, spec)
    except DataError as err:
        assert case.error, f"unexpected error: {err}"
        assert re.search(case.error, str(err)), str(err)
        return
    if case.error:
        assert report.errors, f"expected an error matching {case.error!r}"
        text = "\n".join(i.message() for i in report.errors)
        assert re.search(case.error, text), text
        return
    assert report.ok, report.render()
    _conserved(report, con)
    if case.check:
        found = [i for i in report.issues if i.check == case.check]
        assert found, f"no {case.check!r} in {report.render()}"
        assert found[0].count == case.count, found[0].message()
        assert found[0].examples, "the report shows example rows"


def test_mixed_zones_land_in_utc(write_tiny, con, tmp_path: Path) -> None:
    validate_dataset(con, _mixed_zones(write_tiny, tmp_path))
    got = [r[0] for r in con.execute('SELECT "timestamp" FROM events ORDER BY 1').fetchall()]
    assert pd.Timestamp("2024-01-02 08:00") in got  # 10:00+02:00
    assert pd.Timestamp("2024-02-03 16:00") in got  # 11:00-05:00


def test_shuffled_columns_load_the_same_rows(write_tiny, con, tmp_path: Path) -> None:
    validate_dataset(con, write_tiny(fmt="csv"))
    before = con.execute("SELECT * FROM events ORDER BY ALL").fetchall()
    e = tiny_events()
    validate_dataset(con, write_tiny(events=e[list(reversed(e.columns))], fmt="csv"))
    assert con.execute("SELECT * FROM events ORDER BY ALL").fetchall() == before


def test_volume_spike_rows_are_kept_and_the_day_is_named(write_tiny, con, tmp_path: Path) -> None:
    report = validate_dataset(con, _volume_spike(write_tiny, tmp_path))
    issue = next(i for i in report.issues if i.check == "volume_spike")
    assert issue.severity == "warning" and report.ok
    assert issue.examples[0]["row"] == "2024-03-05" and issue.examples[0]["events"] > SPIKE_RATIO * 20
    assert "WARNING events.timestamp" in report.render()
