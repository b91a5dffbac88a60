"""The typed handle every stage takes: the contract tables, loaded, and what is known about them.

Validation (`churnml.data.load`) and the online path (`churnml.features.online`) both return a
`ContractTables`: a DuckDB session holding the tables ``customers``, ``events`` and ``subscriptions``
in contract form, with the span of the behaviour and the per-type value statistics computed once. A
stage that holds one knows its tables were loaded (and, from files, validated): it never looks for
tables left on a shared connection, nor rescans the events to learn what types and values they hold.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import duckdb
import pandas as pd

from churnml.data.report import ValidationReport
from churnml.schema import EVENT_VOLUME_SQL

__all__ = ["ContractTables", "DataWindow", "EventTypeStats", "event_type_stats"]


@dataclass(frozen=True)
class DataWindow:
    """The span of observed behaviour.

    ``observed_until``: behaviour is known up to this instant (exclusive), so a label window
    ``[t, t + horizon)`` is observed when ``t + horizon <= observed_until``. The spec's
    ``observation.observed_until`` when given; else the end of the last day for date-only data (every
    event at midnight: a purchase dated the last day may be any time that day), else the last event.
    """

    start: pd.Timestamp  # first event
    end: pd.Timestamp  # last event
    observed_until: pd.Timestamp
    date_only: bool


@dataclass(frozen=True)
class EventTypeStats:
    """How one event type's values look in the data (what value-meaning inference reads)."""

    events: int
    valued: int
    low: float | None
    high: float | None
    negative: int
    fractional: int


def event_type_stats(
    con: duckdb.DuckDBPyConnection, daily: str = f"({EVENT_VOLUME_SQL})"
) -> dict[str, EventTypeStats]:
    """Per event type: events, values and their range, from the daily summary ``daily`` (a table or a
    subquery of `churnml.schema.EVENT_VOLUME_SQL`)."""
    rows = con.execute(
        "SELECT event_type, sum(events), sum(valued), min(value_min), max(value_max), sum(negative), "
        f"sum(fractional) FROM {daily} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {
        str(t): EventTypeStats(int(n), int(v or 0), lo, hi, int(neg or 0), int(frac or 0))
        for t, n, v, lo, hi, neg, frac in rows
    }


class ContractTables:
    """The contract tables in ``con``, as loaded by validation or from frames.

    ``report``: validation's report (None for frames loaded without validation). The window and the
    event statistics are computed on first use (the online path needs neither), or passed in when
    validation already has them.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        report: ValidationReport | None = None,
        observed_until: dt.datetime | dt.date | None = None,
        event_stats: dict[str, EventTypeStats] | None = None,
    ) -> None:
        self.con = con
        self.report = report
        self._observed_until = observed_until
        if event_stats is not None:
            self.__dict__["event_stats"] = event_stats

    @cached_property
    def event_stats(self) -> dict[str, EventTypeStats]:
        return event_type_stats(self.con)

    @cached_property
    def window(self) -> DataWindow:
        """The behaviour's span (one scan of the events); a ValueError when there are no events."""
        start, end, date_only = self.con.execute(
            'SELECT min("timestamp"), max("timestamp"), '
            'bool_and("timestamp" = CAST(CAST("timestamp" AS DATE) AS TIMESTAMP)) FROM events'
        ).fetchall()[0]  # type: ignore[misc]
        if start is None:
            raise ValueError("events: the table is empty; churnml needs behaviour to learn from")
        start, end = pd.Timestamp(start), pd.Timestamp(end)
        given = self._observed_until
        if given is None:
            until = end + pd.Timedelta(days=1) if date_only else end
        elif isinstance(given, dt.datetime):
            until = pd.Timestamp(given)
        else:  # a date: observed through the end of that day
            until = pd.Timestamp(given) + pd.Timedelta(days=1)
        return DataWindow(start, end, until, bool(date_only))

    def event_types_between(self, start: pd.Timestamp, end: pd.Timestamp) -> set[str]:
        """The event types seen in ``[start, end)``: what the behaviour held at a date, not since."""
        rows = self.con.execute(
            'SELECT DISTINCT event_type FROM events WHERE "timestamp" >= ? AND "timestamp" < ?',
            [pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()],
        ).fetchall()
        return {str(r[0]) for r in rows}

    def column_types(self, table: str) -> dict[str, str]:
        """Column -> DuckDB type of one contract table (attributes are kept in their source type)."""
        return dict(self.con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {table})").fetchall())
