"""Keyed events: the relational half of the feature definitions, written once in Ibis.

Every event feature (window counts and sums, trends, recency, last value, active days) is computed
from two sorted tables of the events before the last observation date, each event keyed by one
integer, ``(type * n_keys + customer) * span + day``:

- `event_table`: every event's key and timestamp, sorted by key and time, so a customer-type's days
  are one contiguous run and the run's last event is its latest;
- `value_table`: the key and value of the events that carry a value, sorted by key, time and value,
  so the run's last entry is the last value (on a tied timestamp the largest value).

Both are a join and a sort, defined here as Ibis expressions: the embedded default compiles them to
DuckDB SQL, and the same expressions run on PySpark when the events outgrow one machine
(`churnml.features.spark`). There a global sort is not wanted: `keyed_events` and `keyed_values` are
the same tables unsorted with each event's customer key ``ck``, partitioned by it, and each partition
sorts its share by `EVENT_ORDER` and `VALUE_ORDER`. A sort of the events is much cheaper than a ``GROUP BY`` per customer-type-day
here (47M events give 23M such groups; their hash table cost twice the sort), and NumPy reads counts,
windows and last values straight off the sorted runs (`churnml.features`). That second half needs
only one customer's events at a time, so it partitions by customer.
"""

from __future__ import annotations

import functools

import ibis

__all__ = [
    "EVENTS",
    "KEYS",
    "TYPES",
    "USER_EVENTS",
    "DAYS",
    "EVENT_ORDER",
    "VALUE_ORDER",
    "event_table",
    "value_table",
    "keyed_events",
    "keyed_values",
    "duckdb_event_sql",
    "user_table",
]

EVENTS = ibis.schema(
    {"customer_id": "string", "timestamp": "timestamp", "event_type": "string", "value": "float64"}
)
KEYS = ibis.schema({"customer_id": "string", "ck": "int64"})  # customer -> dense integer key
TYPES = ibis.schema({"event_type": "string", "ti": "int64"})  # event type -> dense integer key
USER_EVENTS = ibis.schema({"customer_id": "string", "timestamp": "timestamp", "user_id": "string"})
DAYS = ibis.schema({"t": "timestamp", "day": "date", "age": "int64"})  # each date's days, `age` days back
EVENT_ORDER = ("key", "timestamp")  # a run's last event is its latest
VALUE_ORDER = ("key", "timestamp", "value")  # a run's last entry is the last value (the largest on a tie)


def _keyed(
    events: ibis.Table, keys: ibis.Table, types: ibis.Table, n_keys: int, span: int, origin_day: int
) -> ibis.Table:
    """Events of known customers and types with their integer key (others are dropped by the joins)."""
    j = events.join(keys, "customer_id").join(types, "event_type")
    day = j.timestamp.date().delta(ibis.date(1970, 1, 1), unit="day") - origin_day
    return j.mutate(key=((j.ti * n_keys + j.ck) * span + day).cast("int64"))


def event_table(
    events: ibis.Table, keys: ibis.Table, types: ibis.Table, *, n_keys: int, span: int, origin_day: int
) -> ibis.Table:
    """``(key, timestamp)`` of every event in ``events`` (already cut at the last date), sorted.

    ``origin_day`` is day 0 in days since 1970-01-01 and ``span`` the days from it to the last date,
    so ``0 <= day < span``.
    """
    k = _keyed(events, keys, types, n_keys, span, origin_day)
    return k.select("key", "timestamp").order_by(list(EVENT_ORDER))


def keyed_events(
    events: ibis.Table, keys: ibis.Table, types: ibis.Table, *, n_keys: int, span: int, origin_day: int
) -> ibis.Table:
    """`event_table` unsorted, with each event's customer key ``ck`` to partition it by."""
    return _keyed(events, keys, types, n_keys, span, origin_day).select("ck", *EVENT_ORDER)


def _with_value(keyed: ibis.Table) -> ibis.Table:
    # NaN is no value on every path: pandas (the online path) reads it as missing, Ibis' Spark SQL drops
    # it, and DuckDB would keep it and sort it above every number (validation quarantines NaN anyway)
    return keyed.filter(keyed.value.notnull() & ~keyed.value.isnan())


def value_table(
    events: ibis.Table, keys: ibis.Table, types: ibis.Table, *, n_keys: int, span: int, origin_day: int
) -> ibis.Table:
    """``(key, value)`` of the events with a value, sorted by key, time and value: the last entry of a
    run is the last value, the same on every engine and whatever the row order (so the paths agree)."""
    k = _with_value(_keyed(events, keys, types, n_keys, span, origin_day))
    return k.order_by(list(VALUE_ORDER)).select("key", "value")


def keyed_values(
    events: ibis.Table, keys: ibis.Table, types: ibis.Table, *, n_keys: int, span: int, origin_day: int
) -> ibis.Table:
    """`value_table` unsorted, with ``ck`` and the timestamp its order needs."""
    return _with_value(_keyed(events, keys, types, n_keys, span, origin_day)).select("ck", *VALUE_ORDER)


# Placeholders compiled into the DuckDB templates (16-digit numbers no real query contains)
_PLACEHOLDERS = {
    "n_keys": 7_301_000_000_000_001,
    "span": 7_301_000_000_000_002,
    "origin_day": 7_301_000_000_000_003,
}


@functools.cache
def _duckdb_template(valued: bool) -> str:
    """A keyed-event query compiled once: compiling costs ~10 ms, which every online request would pay."""
    expr = (value_table if valued else event_table)(
        ibis.table(EVENTS, name="_events_before"), ibis.table(KEYS, name="_keys"),
        ibis.table(TYPES, name="_types"), **_PLACEHOLDERS,
    )  # fmt: skip
    sql = ibis.to_sql(expr, dialect="duckdb")
    for name, value in _PLACEHOLDERS.items():
        if sql.count(str(value)) != 1:  # pragma: no cover - guards an Ibis upgrade that folds constants
            raise RuntimeError(f"keyed event query template: placeholder for {name} not found once")
    return sql


def duckdb_event_sql(n_keys: int, span: int, origin_day: int, *, valued: bool) -> str:
    """DuckDB SQL for `event_table` (or `value_table` when ``valued``) over the relations
    ``_events_before``, ``_keys`` and ``_types``.

    The caller defines ``_events_before`` (events before the last date: a literal bound DuckDB pushes
    into the scan).
    """
    sql = _duckdb_template(valued)
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
