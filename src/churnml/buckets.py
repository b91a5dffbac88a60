"""Daily event buckets: the relational half of the feature definitions, written once in Ibis.

Every event feature (window counts and sums, trends, recency, last value, active days) is computed
from one table: per event type, customer and day, the event count, the value sum and count, the
value of the last event with a value and the last timestamp. That table is a plain ``GROUP BY`` over
the events, so it is defined here as an Ibis expression: the embedded default compiles it to DuckDB
SQL, and the same expression runs on a distributed engine (tested on PySpark) when the events
outgrow one machine. The second half, turning sorted buckets into per-row features, is NumPy code
that needs only one customer's buckets at a time (`churnml.features`), so it partitions by customer.

Rows are keyed by one integer, ``(type * n_keys + customer) * span + day``, so buckets sorted by
key hold each customer-type's days as one contiguous run.
"""

from __future__ import annotations

import functools

import ibis
import ibis.expr.datatypes as dt

__all__ = [
    "EVENTS",
    "KEYS",
    "TYPES",
    "USER_EVENTS",
    "DAYS",
    "DUCKDB_MACROS",
    "bucket_table",
    "duckdb_bucket_sql",
    "user_table",
    "duckdb_user_sql",
]

EVENTS = ibis.schema(
    {"customer_id": "string", "timestamp": "timestamp", "event_type": "string", "value": "float64"}
)
KEYS = ibis.schema({"customer_id": "string", "ck": "int64"})  # customer -> dense integer key
TYPES = ibis.schema({"event_type": "string", "ti": "int64"})  # event type -> dense integer key
USER_EVENTS = ibis.schema({"customer_id": "string", "timestamp": "timestamp", "user_id": "string"})
DAYS = ibis.schema({"t": "timestamp", "day": "date", "age": "int64"})  # each date's days, `age` days back

# DuckDB: (timestamp, value) packed into one HUGEINT, so DuckDB's arg_max orders by the timestamp and,
# on a tie, by the value. The value part is a monotone map of the double into [0, 2^64): its sign
# times log(1 + |v|), shifted by 710 (log of the largest double) and scaled by 2^53. Values that agree
# to about 13 significant digits map alike; between those a tie stays arbitrary.
# Events without a value never win, so the key is only computed for the others (CASE evaluates its
# branch on those rows alone: 0.6 s less on 47M events, of which about a third carry a value).
DUCKDB_MACROS = """CREATE OR REPLACE TEMP MACRO churnml_last_order(ts, v) AS CASE WHEN v IS NOT NULL THEN
    epoch_us(ts)::HUGEINT * 18446744073709551616
    + CAST(floor((sign(v) * ln(1 + abs(v)) + 710) * 9007199254740992) AS HUGEINT) END"""


@ibis.udf.scalar.builtin(name="churnml_last_order")
def _duckdb_last_order(ts: dt.timestamp, value: dt.float64) -> dt.Decimal(38, 0):  # type: ignore[valid-type]
    """The macro above (DuckDB only)."""


@ibis.udf.agg.builtin(name="arg_max")
def _duckdb_arg_max(arg: dt.float64, key: dt.Decimal(38, 0)) -> dt.float64:  # type: ignore[valid-type]
    """DuckDB's own arg_max: Ibis's argmax compiles to an ordered FIRST, 3 s slower on 47M events."""


def bucket_table(
    events: ibis.Table,
    keys: ibis.Table,
    types: ibis.Table,
    *,
    n_keys: int,
    span: int,
    origin_day: int,
    dialect: str,
) -> ibis.Table:
    """Daily buckets of ``events`` (already cut at the last observation date), sorted by key.

    ``origin_day`` is day 0 in days since 1970-01-01 and ``span`` the days from it to the last date,
    so ``0 <= day < span``. Events of customers or types absent from ``keys``/``types`` are dropped.
    The last value is that of the latest event with a value; on a tied timestamp the largest value
    wins, on every engine and whatever the row order (so the three feature paths agree).
    """
    j = events.join(keys, "customer_id").join(types, "event_type")
    day = j.timestamp.date().delta(ibis.date(1970, 1, 1), unit="day") - origin_day
    key = (j.ti * n_keys + j.ck) * span + day
    if dialect == "duckdb":
        last = _duckdb_arg_max(j.value, _duckdb_last_order(j.timestamp, j.value))
    else:  # engines that order structs field by field (Spark's max_by, for one)
        last = j.value.argmax(ibis.struct({"ts": j.timestamp, "v": j.value}), where=j.value.notnull())
    return (
        j.group_by(key=key)
        .aggregate(
            n=j.count(), s=j.value.sum(), nv=j.value.count(), last_value=last, last_ts=j.timestamp.max()
        )
        .order_by("key")
    )


# Placeholders compiled into the DuckDB template (16-digit numbers no real query contains)
_PLACEHOLDERS = {
    "n_keys": 7_301_000_000_000_001,
    "span": 7_301_000_000_000_002,
    "origin_day": 7_301_000_000_000_003,
}


@functools.cache
def _duckdb_template() -> str:
    """The bucket query compiled once: compiling costs ~10 ms, which every online request would pay."""
    expr = bucket_table(
        ibis.table(EVENTS, name="_events_before"), ibis.table(KEYS, name="_keys"),
        ibis.table(TYPES, name="_types"), dialect="duckdb", **_PLACEHOLDERS,
    )  # fmt: skip
    sql = ibis.to_sql(expr, dialect="duckdb")
    for name, value in _PLACEHOLDERS.items():
        if sql.count(str(value)) != 1:  # pragma: no cover - guards an Ibis upgrade that folds constants
            raise RuntimeError(f"bucket query template: placeholder for {name} not found once")
    return sql


def duckdb_bucket_sql(n_keys: int, span: int, origin_day: int) -> str:
    """DuckDB SQL for `bucket_table` over the relations ``_events_before``, ``_keys`` and ``_types``.

    The caller defines ``_events_before`` (events before the last date: a literal bound DuckDB pushes
    into the scan) and creates `DUCKDB_MACROS` on the connection.
    """
    sql = _duckdb_template()
    for name, value in {"n_keys": n_keys, "span": span, "origin_day": origin_day}.items():
        sql = sql.replace(str(_PLACEHOLDERS[name]), str(int(value)))
    return sql


def user_table(
    events: ibis.Table, keys: ibis.Table, days: ibis.Table, *, window: int, distinct_first: bool
) -> ibis.Table:
    """Distinct users per (customer key ``ck``, date ``t``) over the ``window`` days before the date.

    ``events`` holds the events in the days some date's window covers. Each (customer, day, user) meets
    the dates whose window holds its day: about once for monthly dates, so raw events go straight in;
    with dense (e.g. daily) dates up to ``window`` times, so ``distinct_first`` makes them distinct.
    """
    e = events.filter(events.user_id.notnull()).join(keys, "customer_id")
    u = e.select(ck=e.ck, day=e.timestamp.date(), user_id=e.user_id)
    u = u.distinct() if distinct_first else u.view()  # a projection of a join joins again as a view
    d = days.filter(days.age <= window).select("t", "day")
    j = u.join(d, "day")
    return j.group_by(["ck", "t"]).aggregate(users=j.user_id.nunique())


@functools.cache
def duckdb_user_sql(window: int, distinct_first: bool) -> str:
    """DuckDB SQL for `user_table` over the relations ``_user_events``, ``_keys`` and ``_daymap``."""
    expr = user_table(
        ibis.table(USER_EVENTS, name="_user_events"), ibis.table(KEYS, name="_keys"),
        ibis.table(DAYS, name="_daymap"), window=window, distinct_first=distinct_first,
    )  # fmt: skip
    return ibis.to_sql(expr, dialect="duckdb")
