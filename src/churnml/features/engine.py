"""Point-in-time features: one definition for training, batch scoring and the online endpoint.

Every feature of a row (customer_id, observation_date) is computed from contract rows strictly
before the observation date (a midnight), so nothing that happens on or after it can leak in.

The computation stays long and narrow:

1. events are keyed by one integer per (event type, customer, day) and fetched sorted by it: every
   event's key and time, and the key and value of the events with a value. These are Ibis
   expressions (`churnml.buckets`): DuckDB runs them here, and the same definitions run on PySpark
   (tested) when the events outgrow one machine;
2. for each row and event type, NumPy reads the families of `churnml.features.definitions` off the
   sorted runs by binary search (`churnml.features.runs`): counts, trends and recency for every type,
   and what the type's value means allows (sums, scores, net changes, distinct identifiers);
3. the account state as of each date (plan, MRR, seats, renewal, tenure and the distinct users of
   the last 30 days: one row per customer and date), an Ibis expression too (`churnml.accounts`);
4. the results are written column by column into one NumPy matrix (no pivot in SQL, which is costly).

Which event types, value meanings and attributes exist is fixed at training time in a `FeatureSet`
saved with the model, so scoring always produces the same columns.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from churnml.accounts import duckdb_account_sql
from churnml.buckets import duckdb_event_sql
from churnml.data.tables import ContractTables
from churnml.engine import quote_literal
from churnml.features.btyd import btyd_columns
from churnml.features.definitions import LOOKBACK, TREND, WINDOWS, column_name, slug
from churnml.features.runs import (
    NO_KEY,
    account_days,
    count_features,
    first_and_active_days,
    prepare_events,
    value_features,
)
from churnml.features.sets import FeatureSet

__all__ = [
    "EventShape",
    "build_features",
    "date_bounds",
    "engine_threads",
    "feature_rows",
    "features_from_events",
]


def feature_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` checked, as ``(_ri, customer_id, t)``: the row index, the id as text, the date."""
    missing = {"customer_id", "observation_date"} - set(rows.columns)
    if missing:
        raise ValueError(
            f"feature rows: missing column(s) {sorted(missing)}; expected customer_id, observation_date"
        )
    dates = pd.to_datetime(rows["observation_date"]).astype("datetime64[us]")
    if (dates != dates.dt.normalize()).any():
        bad = rows.loc[dates != dates.dt.normalize(), "observation_date"].iloc[0]
        raise ValueError(f"feature rows: observation_date must be a date (midnight), got {bad}")
    if rows["customer_id"].isna().any():
        raise ValueError("feature rows: customer_id has empty values")
    # `.array` keeps pandas' Arrow-backed strings as they are (a NumPy round trip costs ~0.5 s per 1M rows)
    return pd.DataFrame({"_ri": np.arange(len(rows), dtype=np.int64),
                         "customer_id": rows["customer_id"].astype(str).array, "t": dates.to_numpy()})  # fmt: skip


def build_features(tables: ContractTables, rows: pd.DataFrame, feature_set: FeatureSet) -> pd.DataFrame:
    """Features for each (customer_id, observation_date) row, from the contract ``tables``.

    Returns the rows (same order) with one column per ``feature_set.columns``. The contract tables must
    not change while this runs: events are read by several statements, each on its own snapshot.
    """
    fs, con = feature_set, tables.con
    frame = feature_rows(rows)
    out = pd.DataFrame({"customer_id": frame["customer_id"], "observation_date": frame["t"]})
    n = len(frame)
    if n == 0:
        for c in fs.columns:
            out[c] = pd.Series(dtype="object" if c in fs.categorical_columns else "float64")
        return out
    types = list(fs.event_types)
    # Integer keys for customers and event types: every join and GROUP BY below runs on integers.
    codes, ids = pd.factorize(frame["customer_id"])
    ck = codes.astype(np.int64)
    frame = frame.assign(ck=ck)
    # the account query (step 4) is DuckDB alone: with threads to spare it runs on a second session while
    # NumPy works on the sorted events (which leaves a core idle), so that session needs the key tables too
    side = _side_session(con)
    try:
        for session in (con,) if side is None else (con, side):
            _key_tables(session, frame, ids, types)
        with ThreadPoolExecutor(max_workers=1) as side_pool:  # leaving it waits for the side query
            try:
                return _build_features(con, side, side_pool, frame, fs, len(ids))
            finally:
                if side is not None:
                    side.interrupt()  # stops the side query if an error left it running
    finally:
        if side is not None:
            side.close()


@dataclass(frozen=True)
class EventShape:
    """How the keyed events number customers and days: key = (type * n_keys + customer) * span + day."""

    n_keys: int  # customers (``ck`` runs from 0 to n_keys - 1)
    origin: int  # day 0, in days since 1970
    span: int  # days from day 0 to the last date

    @staticmethod
    def of(origin: int | None, t: pd.Series) -> EventShape:
        """Day 0 at the first event's day (``origin``; the first date when there is none), up to the
        last date (the customers are counted later)."""
        t_days = t.to_numpy().astype("datetime64[D]").astype(np.int64)
        origin = int(origin) if origin is not None else int(t_days.min())
        return EventShape(0, origin, int(max(t_days.max() - origin, 0)) + 1)


def date_bounds(t: pd.Series) -> tuple[str, str, bool]:
    """SQL literals of the first and last date, and whether the dates are dense: so close that a day
    sits in more than two dates' windows (the distinct users are then counted per day first)."""
    first_t, last_t = quote_literal(str(t.min())), quote_literal(str(t.max()))
    dates = np.unique(t.to_numpy().astype("datetime64[D]").astype(np.int64))
    return first_t, last_t, bool(len(dates) * TREND > 2 * (dates[-1] - dates[0] + TREND))


@dataclass
class _Fetched:
    """The day numbering the keyed events of the rows' customers use, and the dates' bounds."""

    shape: EventShape
    first_t: str  # SQL literals of the first and last row dates
    last_t: str
    dense: bool  # dates so close that a day sits in several dates' windows


class _Matrix:
    """The feature matrix, filled column by column; every numeric column must be filled exactly by a
    family's computation (a column the registry declares but nothing computes is an error, not NaN)."""

    def __init__(self, n: int, fs: FeatureSet) -> None:
        # column-major: each feature is one contiguous column, cheap to fill and to hand to pandas; left
        # uninitialised (touching 1 GB twice costs seconds), so every column is filled through `put`
        self.fs = fs
        self.data = np.empty((n, len(fs.columns)), order="F")
        self.index = {c: i for i, c in enumerate(fs.columns)}
        self.filled: set[str] = set()

    def put(self, col: str, values: np.ndarray) -> None:
        if col in self.fs.dropped:  # computed with its family, left out of the model
            return
        if col not in self.index:
            raise KeyError(f"features: computed column {col!r} is not in the feature set")
        self.data[:, self.index[col]] = values
        self.filled.add(col)

    def check(self) -> None:
        missing = [
            c for c in self.fs.columns if c not in self.filled and c not in self.fs.categorical_columns
        ]
        if missing:
            raise RuntimeError(f"features: no computation filled {missing[:5]} (a definition without code?)")


def _fetch_events(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, n_keys: int) -> _Fetched:
    """1. the day numbering of the events before the last date (rows' customers, known types), keyed by
    one integer = (type * customers + customer) * span + day, and their view ``_events_before``."""
    first_t, last_t, dense = date_bounds(frame["t"])
    # Literal bounds, not scalar subqueries: DuckDB pushes literals into the scan (3x faster here).
    day_sql = """(CAST(e."timestamp" AS DATE) - DATE '1970-01-01')"""  # days since 1970, as NumPy counts them
    first_day = con.execute(
        f'SELECT min({day_sql}) FROM events e WHERE e."timestamp" < TIMESTAMP {last_t}'
    ).fetchall()[0][0]
    shape = EventShape.of(first_day, frame["t"])
    con.execute(
        'CREATE OR REPLACE TEMP VIEW _events_before AS SELECT customer_id, "timestamp", event_type, value '
        f'FROM events WHERE "timestamp" < TIMESTAMP {last_t}'
    )
    return _Fetched(EventShape(n_keys, shape.origin, shape.span), first_t, last_t, dense)


def _build_features(
    con: duckdb.DuckDBPyConnection,
    side: duckdb.DuckDBPyConnection | None,
    side_pool: ThreadPoolExecutor,
    frame: pd.DataFrame,
    fs: FeatureSet,
    n_keys: int,
) -> pd.DataFrame:
    got = _fetch_events(con, frame, n_keys)
    shape = got.shape
    fetched = con.execute(duckdb_event_sql(n_keys, shape.span, shape.origin, valued=False))
    account_job = (
        None
        if side is None
        else side_pool.submit(_account_frame, side, fs, got.first_t, got.last_t, got.dense)
    )
    timed = fetched.fetchnumpy()
    del fetched
    valued = con.execute(duckdb_event_sql(n_keys, shape.span, shape.origin, valued=True)).fetchnumpy()
    events = prepare_events(timed, valued)
    del timed, valued

    def account() -> pd.DataFrame:
        """4. account state as of the date (already running on the side session when there is one)."""
        if account_job is None:
            return _account_frame(con, fs, got.first_t, got.last_t, got.dense)
        return account_job.result()

    return features_from_events(frame, fs, events, shape, account, engine_threads(con))


def features_from_events(
    frame: pd.DataFrame, fs: FeatureSet, events: dict[str, np.ndarray], shape: EventShape,
    account: Callable[[], pd.DataFrame], threads: int,
) -> pd.DataFrame:  # fmt: skip
    """2.-4. the features of ``frame``'s rows (``_ri, customer_id, t, ck``) from their customers' sorted
    keyed ``events`` (`prepare_events`) and account state (``account()``, one row per row, in order).

    The half that needs only one customer's rows at a time: the DuckDB engine runs it on all rows,
    Spark on each customer partition (`churnml.features.spark`). ``events`` is emptied once read.
    """
    t_rel = frame["t"].to_numpy().astype("datetime64[D]").astype(np.int64) - shape.origin
    matrix = _Matrix(len(frame), fs)
    first_rel, active = _event_columns(matrix, frame, events, shape, t_rel, threads)
    events.clear()  # the largest arrays here
    account = account()
    no_since = account["tenure_days"].isna().to_numpy() & (first_rel < t_rel)
    account["tenure_days"] = np.where(
        no_since, (t_rel - first_rel).astype(np.float64), account["tenure_days"]
    )
    account["active_days_30d"] = active.astype(np.float64)
    for col in [*fs.account_columns, *fs.numeric_attribute_columns]:
        matrix.put(col, account[col].to_numpy(dtype=np.float64, na_value=np.nan))
    matrix.check()
    return _result(matrix, frame, account)


def _event_columns(
    matrix: _Matrix, frame: pd.DataFrame, events: dict[str, np.ndarray], shape: EventShape, t_rel: np.ndarray,
    threads: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """2.-3. every event family per (row, event type), and each row's first active day and active days.

    Rows sorted by customer and date make each type's searches ascend.
    """
    fs, n, ck = matrix.fs, len(frame), frame["ck"].to_numpy()
    types = list(fs.event_types)
    order = np.lexsort((t_rel, ck))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    ck_sorted, rel_sorted = ck[order], t_rel[order]
    t_us = frame["t"].to_numpy().astype("datetime64[us]").astype(np.int64)[order]
    n_keys, span = shape.n_keys, shape.span

    fitted = dict(fs.btyd)

    def type_features(ti: int) -> None:
        base = (ti * n_keys + ck_sorted) * span
        computed = count_features(events, base, rel_sorted, t_us, WINDOWS)
        computed |= value_features(events, base, rel_sorted, fs.value(types[ti]).meaning, span)
        if types[ti] in fitted:  # BG/NBD from the row's own summary and the parameters the set carries
            inputs = [
                computed[(k, None)] for k in ("active_days_total", "days_since_first", "days_since_last")
            ]
            computed |= {
                (k, None): v
                for k, v in btyd_columns(fitted[types[ti]], fs.btyd_horizon_days, *inputs).items()
            }
        s = slug(types[ti])
        for (key, window), values in computed.items():
            if fs.computes(key, types[ti]):  # a model on older definitions lacks the newer families
                matrix.put(column_name(key, s, window), values[inverse])

    def day_features() -> tuple[np.ndarray, np.ndarray]:
        """Each row's first active day and active days in the last TREND days, over all types."""
        keys = events["key"]
        days = account_days(keys[:-1] if keys[-1] == NO_KEY else keys, n_keys, span)
        return first_and_active_days(days, ck, t_rel, span)

    # one type per thread: NumPy releases the GIL in searches and gathers, and each type has its columns
    with ThreadPoolExecutor(max_workers=max(1, min(len(types), threads))) as pool:
        days_job = pool.submit(day_features)  # single-threaded: it runs alongside the types
        list(pool.map(type_features, range(len(types))))
    return days_job.result()


def _result(matrix: _Matrix, frame: pd.DataFrame, account: pd.DataFrame) -> pd.DataFrame:
    """The rows with their features: categorical columns come last in the feature set, so the numeric
    block is a leading slice of the matrix (no copy)."""
    fs = matrix.fs
    n_numeric = len(fs.columns) - len(fs.categorical_columns)
    assert fs.columns[n_numeric:] == fs.categorical_columns
    result = pd.DataFrame(matrix.data[:, :n_numeric], columns=fs.columns[:n_numeric], copy=False)
    result.insert(0, "observation_date", frame["t"].to_numpy())
    result.insert(0, "customer_id", frame["customer_id"].array)
    for c in fs.categorical_columns:
        values = account[c]
        if isinstance(values.dtype, pd.StringDtype):  # text, as DuckDB returns it: used as is
            result[c] = values.array
        else:  # other kinds (booleans, an all-NULL column): objects with None for missing
            values = values.astype("object")
            result[c] = values.where(values.notna(), None).to_numpy()
    return result


def _key_tables(
    con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, ids: np.ndarray, types: list[str]
) -> None:
    """The session's integer keys for customers (``_keys``), rows (``_rows``), types and each date's days."""
    con.register("_keys_df", pd.DataFrame({"customer_id": ids, "ck": np.arange(len(ids), dtype=np.int64)}))
    con.register("_rows_df", frame)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _keys AS SELECT customer_id, ck FROM _keys_df")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _rows AS SELECT _ri, ck, customer_id, CAST(t AS TIMESTAMP) AS t FROM _rows_df"
        )
    finally:
        con.unregister("_keys_df")
        con.unregister("_rows_df")
    values_sql = ", ".join(f"({quote_literal(t)}, {i})" for i, t in enumerate(types))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _types AS SELECT * FROM (VALUES {values_sql}) v(event_type, ti)"
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _daymap AS
        SELECT d.t, CAST(d.t - INTERVAL (k) DAY AS DATE) AS day, k AS age
        FROM (SELECT DISTINCT t FROM _rows) d, range(1, {LOOKBACK + 1}) r(k)"""
    )


def _side_session(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection | None:
    """A second session on ``con``'s database for the account query, or None when there is nothing to
    overlap (one thread: the online path) or when it might not read what ``con`` reads: an open
    transaction (its changes are invisible elsewhere), a temporary table or registered frame under a
    contract table's name, or contract tables outside the database and schema a new session starts in."""
    if engine_threads(con) < 2:
        return None
    names = "('events', 'customers', 'subscriptions')"
    shadowed, shared = con.execute(
        f"""SELECT
            (SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name IN {names})
            + (SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name IN {names}),
            (SELECT count(DISTINCT table_name) FROM duckdb_tables() WHERE NOT temporary
             AND database_name = current_database() AND schema_name = current_schema() AND table_name IN {names})"""
    ).fetchall()[0]
    if shadowed or shared < 3:
        return None
    # an open transaction keeps its id from one statement to the next; outside one each gets its own
    if len({con.execute("SELECT txid_current()").fetchall()[0][0] for _ in range(2)}) == 1:
        return None
    here = con.execute("SELECT current_database(), current_schema(), current_setting('TimeZone')").fetchall()[
        0
    ]
    side = con.cursor()
    try:
        if side.execute("SELECT current_database(), current_schema()").fetchall()[0] != here[:2]:
            side.close()
            return None
        # settings such as memory and threads belong to the database; the time zone to the session
        side.execute(f"SET TimeZone = {quote_literal(here[2])}")
    except BaseException:
        side.close()
        raise
    return side


def engine_threads(con: duckdb.DuckDBPyConnection) -> int:
    """The threads this connection may use (1 on the online path), for the NumPy steps too."""
    return int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])


def _account_frame(
    con: duckdb.DuckDBPyConnection, fs: FeatureSet, first_t: str, last_t: str, dense_dates: bool = False
) -> pd.DataFrame:
    """Per-row account features in row order (`churnml.accounts`): users, subscription state, attributes,
    and tenure from signup or the first subscription (the first-event fallback and active days come
    from the sorted events)."""
    # the distinct users of the last 30 days read the events in the days some date's window covers
    con.execute(
        'CREATE OR REPLACE TEMP VIEW _user_events AS SELECT customer_id, "timestamp", user_id FROM events '
        f'WHERE user_id IS NOT NULL AND "timestamp" >= TIMESTAMP {first_t} - INTERVAL {TREND} DAY '
        f'AND "timestamp" < TIMESTAMP {last_t}'
    )
    categorical = set(fs.categorical_attributes)
    attributes = tuple(
        (a, "string" if a in categorical else "float64", f"attr_{slug(a)}") for a in fs.attributes
    )
    sql = duckdb_account_sql(attributes, int(fs.term_months), TREND, dense_dates)
    frame = con.execute(sql).df().drop(columns=["_ri", "ck"])
    return frame.reset_index(drop=True)
