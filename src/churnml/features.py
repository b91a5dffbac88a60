"""Point-in-time features: one definition for training, batch scoring and the online endpoint.

Every feature of a row (customer_id, observation_date) is computed from contract rows strictly
before the observation date (a midnight), so nothing that happens on or after it can leak in.

The computation stays long and narrow:

1. events are keyed by one integer per (event type, customer, day) and fetched sorted by it: every
   event's key and time, and the key and value of the events with a value. These are Ibis
   expressions (`churnml.buckets`): DuckDB runs them here, and the same definitions run on PySpark
   (tested) when the events outgrow one machine;
2. for each row and event type, the customer's events before the date are one contiguous run of
   the sorted keys, found by binary search in NumPy: windows (7/30/90 days, trends) are sub-runs,
   counts are differences of positions, and the run's last event gives recency and the mean gap;
   value sums, means and the last value come from the run of the same key in the sorted values;
3. the account state as of each date (plan, MRR, seats, renewal, tenure and the distinct users of
   the last 30 days: one row per customer and date), an Ibis expression too (`churnml.accounts`);
4. the results are written column by column into one NumPy matrix (no pivot in SQL, which is costly).

Which event types, value columns and attributes exist is fixed at training time in a
:class:`FeatureSet` saved with the model, so scoring always produces the same columns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

import duckdb
import numpy as np
import pandas as pd

from churnml.accounts import duckdb_account_sql
from churnml.buckets import duckdb_event_sql
from churnml.config import Settings
from churnml.engine import connect, quote_ident, quote_literal
from churnml.labels import build_labels, data_window
from churnml.spec import DatasetSpec

__all__ = [
    "WINDOWS",
    "FEATURE_DEFINITION",
    "DEFINITION_CHANGES",
    "DefinitionChange",
    "latest_date",
    "scoring_rows",
    "training_table",
    "FeatureSet",
    "infer_feature_set",
    "build_features",
    "features_from_frames",
    "load_contract_frames",
]

WINDOWS = (7, 30, 90)
LOOKBACK = max(WINDOWS)
TREND = 30  # trend compares the last TREND days with the TREND days before
CATEGORICAL = ("plan", "segment")
# Bumped when a feature's meaning changes, so a model trained on the old meaning can say so
FEATURE_DEFINITION = 2


@dataclass(frozen=True)
class DefinitionChange:
    """What one feature definition number changed, and the columns (by name ending) it touched."""

    description: str
    column_endings: tuple[str, ...]


DEFINITION_CHANGES = {
    2: DefinitionChange(
        "an event type's last value comes from its latest event with a value (it was empty when the "
        "latest active day had none), and so does the NPS detractor flag",
        ("_last_value", "nps_detractor"),
    ),
}


def slug(name: str) -> str:
    """A column-safe form of an event type or attribute name."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "x"


@dataclass(frozen=True)
class FeatureSet:
    """The shape of the feature table, fixed when a model is trained and saved with it."""

    event_types: tuple[str, ...]
    valued_types: tuple[str, ...]
    attributes: tuple[str, ...] = ()
    categorical_attributes: tuple[str, ...] = ()
    term_months: int = 1
    windows: tuple[int, ...] = WINDOWS
    # snapshot mode (`churnml train --table`): a ready feature table's own columns, no event features
    table_numeric: tuple[str, ...] = ()
    table_categorical: tuple[str, ...] = ()
    definition: int = FEATURE_DEFINITION  # of the features this set was built with

    @property
    def is_snapshot(self) -> bool:
        return bool(self.table_numeric or self.table_categorical)

    def __post_init__(self) -> None:
        if not self.event_types and not self.is_snapshot:
            raise ValueError("feature set: no event types; features are built from behaviour events")
        slugs = [slug(t) for t in self.event_types]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"event types {list(self.event_types)} collide once made column-safe: {slugs}")

    def event_columns(self, event_type: str) -> list[str]:
        s = slug(event_type)
        cols = [f"{s}_count_{w}d" for w in self.windows]
        cols += [
            f"{s}_count_trend_ratio",
            f"{s}_count_trend_delta",
            f"{s}_active_days_{TREND}d",
            f"days_since_last_{s}",
            f"{s}_count_total",
            f"{s}_mean_gap_days",
            f"{s}_overdue_ratio",
        ]
        if event_type in self.valued_types:
            cols += [f"{s}_value_sum_{TREND}d", f"{s}_value_sum_{LOOKBACK}d", f"{s}_value_mean_{TREND}d",
                     f"{s}_value_mean_{LOOKBACK}d", f"{s}_last_value", f"{s}_value_sum_total"]  # fmt: skip
        return cols

    @property
    def account_columns(self) -> list[str]:
        cols = ["tenure_days", "active_days_30d", "active_users_30d", "mrr", "mrr_change_90d", "seats",
                "seats_used_ratio", "days_to_renewal"]  # fmt: skip
        if "nps_response" in self.event_types:
            cols.append("nps_detractor")
        return cols

    @property
    def categorical_columns(self) -> list[str]:
        if self.is_snapshot:
            return list(self.table_categorical)
        return [*CATEGORICAL, *(f"attr_{slug(a)}" for a in self.categorical_attributes)]

    @property
    def numeric_attribute_columns(self) -> list[str]:
        return [f"attr_{slug(a)}" for a in self.attributes if a not in self.categorical_attributes]

    @property
    def columns(self) -> list[str]:
        """Every feature column, in model order."""
        if self.is_snapshot:
            return [*self.table_numeric, *self.table_categorical]
        cols = [c for t in self.event_types for c in self.event_columns(t)]
        return cols + self.account_columns + self.numeric_attribute_columns + self.categorical_columns

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSet:
        data = json.loads(text)
        for key in ("event_types", "valued_types", "attributes", "categorical_attributes", "windows",
                    "table_numeric", "table_categorical"):  # fmt: skip
            data[key] = tuple(data.get(key, ()))
        data.setdefault("definition", 1)  # saved before definitions were numbered
        if data.get("extra") == {}:  # an unused field of the first releases (always empty)
            del data["extra"]
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"feature set has fields this churnml does not know: {unknown} (saved by a newer one?)"
            )
        return cls(**data)

    def definition_changes(self) -> list[str]:
        """What changed in the meaning of this set's columns since the definitions it was built with."""
        if self.is_snapshot:  # a ready table's columns mean what the table says
            return []
        return [
            change.description
            for number, change in DEFINITION_CHANGES.items()
            if number > self.definition and any(c.endswith(change.column_endings) for c in self.columns)
        ]


def infer_feature_set(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> FeatureSet:
    """Read the event types, valued types and attribute kinds from the loaded contract tables."""
    rows = con.execute(
        f"SELECT event_type, sum(valued) > 0 FROM {_event_volume(con)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    if not rows:
        raise ValueError("events: the table is empty; churnml needs behaviour to build features from")
    attributes = tuple(spec.customers.attributes) if spec.customers else ()
    kinds = (
        dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE customers)").fetchall())
        if attributes
        else {}
    )
    categorical = tuple(a for a in attributes if kinds.get(a) not in _NUMERIC_TYPES)
    return FeatureSet(
        event_types=tuple(r[0] for r in rows),
        valued_types=tuple(r[0] for r in rows if r[1]),
        attributes=attributes,
        categorical_attributes=categorical,
        term_months=spec.subscriptions.term_months if spec.subscriptions else 1,
    )


def _event_volume(con: duckdb.DuckDBPyConnection) -> str:
    """Events per day and type, with how many carry a value: the table validation leaves
    (`churnml.validate`), or the same query over ``events`` when there is none."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'event_volume' "
        "AND database_name = current_database() AND schema_name = current_schema()"
    ).fetchall()[0][0]
    if found:
        return "event_volume"
    return "(SELECT event_type, count(*) AS events, count(value) AS valued FROM events GROUP BY 1)"


_NUMERIC_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "UTINYINT",
                  "USMALLINT", "UINTEGER", "UBIGINT"}  # fmt: skip


def _check_rows(rows: pd.DataFrame) -> pd.DataFrame:
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


def build_features(
    con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, feature_set: FeatureSet
) -> pd.DataFrame:
    """Features for each (customer_id, observation_date) row, from the contract tables in ``con``.

    Returns the rows (same order) with one column per ``feature_set.columns``. The contract tables must
    not change while this runs: events are read by several statements, each on its own snapshot.
    """
    fs = feature_set
    frame = _check_rows(rows)
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
                return _build_features(con, side, side_pool, frame, fs, ids, types)
            finally:
                if side is not None:
                    side.interrupt()  # stops the side query if an error left it running
    finally:
        if side is not None:
            side.close()


def _build_features(
    con: duckdb.DuckDBPyConnection,
    side: duckdb.DuckDBPyConnection | None,
    side_pool: ThreadPoolExecutor,
    frame: pd.DataFrame,
    fs: FeatureSet,
    ids: np.ndarray,
    types: list[str],
) -> pd.DataFrame:
    n, ck = len(frame), frame["ck"].to_numpy()
    # Literal bounds, not scalar subqueries: DuckDB pushes literals into the scan (3x faster here).
    first_t, last_t = quote_literal(str(frame["t"].min())), quote_literal(str(frame["t"].max()))
    # 1. every event before the last date (rows' customers, known types), fetched sorted by one integer
    #    key = (type * customers + customer) * span + day, then the events with a value
    t_days = frame["t"].to_numpy().astype("datetime64[D]").astype(np.int64)
    day_sql = """(CAST(e."timestamp" AS DATE) - DATE '1970-01-01')"""  # days since 1970, as NumPy counts them
    first_day = con.execute(
        f'SELECT min({day_sql}) FROM events e WHERE e."timestamp" < TIMESTAMP {last_t}'
    ).fetchall()[0][0]
    origin = int(first_day) if first_day is not None else int(t_days.min())
    span = int(max(t_days.max() - origin, 0)) + 1
    n_keys = len(ids)
    con.execute(
        'CREATE OR REPLACE TEMP VIEW _events_before AS SELECT customer_id, "timestamp", event_type, value '
        f'FROM events WHERE "timestamp" < TIMESTAMP {last_t}'
    )
    fetched = con.execute(duckdb_event_sql(n_keys, span, origin, valued=False))
    dates = np.unique(t_days)
    dense = len(dates) * TREND > 2 * (dates[-1] - dates[0] + TREND)  # a day sits in > 2 dates' windows
    account_job = None if side is None else side_pool.submit(_account_frame, side, fs, first_t, last_t, dense)
    timed = fetched.fetchnumpy()
    del fetched
    valued = con.execute(duckdb_event_sql(n_keys, span, origin, valued=True)).fetchnumpy()
    sorted_events = _prepare_events(timed, valued)
    del timed, valued
    t_rel = t_days - origin
    # column-major: each feature is one contiguous column, cheap to fill and to hand to pandas; left
    # uninitialised (touching 1 GB twice costs seconds), so every column is filled through `put`
    matrix = np.empty((n, len(fs.columns)), order="F")
    col_index = {c: i for i, c in enumerate(fs.columns)}
    filled: set[str] = set()

    def put(col: str, values: np.ndarray) -> None:
        matrix[:, col_index[col]] = values
        filled.add(col)

    # 2.-3. window, trend and whole-history aggregates per (row, event type); rows sorted by customer
    #       and date make each type's searches ascend
    order = np.lexsort((t_rel, ck))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    ck_sorted, rel_sorted = ck[order], t_rel[order]
    t_us = frame["t"].to_numpy().astype("datetime64[us]").astype(np.int64)[order]

    def type_features(ti: int, events: dict[str, np.ndarray] = sorted_events) -> None:
        base = (ti * n_keys + ck_sorted) * span
        values = _event_features(events, base, rel_sorted, t_us, fs.windows)
        for name, v in values.items():
            col = name.format(s=slug(types[ti]))
            if col in col_index:
                put(col, v[inverse])

    def day_features(keys: np.ndarray = sorted_events["key"]) -> tuple[np.ndarray, np.ndarray]:
        """Each row's first active day and active days in the last TREND days, over all types."""
        days = _account_days(keys[:-1] if keys[-1] == _NO_KEY else keys, n_keys, span)
        return _first_and_active_days(days, ck, t_rel, span)

    # one type per thread: NumPy releases the GIL in searches and gathers, and each type has its columns
    with ThreadPoolExecutor(max_workers=max(1, min(len(types), _engine_threads(con)))) as pool:
        days_job = pool.submit(day_features)  # single-threaded: it runs alongside the types
        list(pool.map(type_features, range(len(types))))
    first_rel, active = days_job.result()
    del sorted_events  # the largest arrays here

    # 4. account state as of the date (already running on the side session when there is one)
    account = _account_frame(con, fs, first_t, last_t, dense) if account_job is None else account_job.result()
    no_since = account["tenure_days"].isna().to_numpy() & (first_rel < t_rel)
    account["tenure_days"] = np.where(
        no_since, (t_rel - first_rel).astype(np.float64), account["tenure_days"]
    )
    account["active_days_30d"] = active.astype(np.float64)
    for col in [*fs.account_columns, *fs.numeric_attribute_columns]:
        if col in account:
            put(col, account[col].to_numpy(dtype=np.float64, na_value=np.nan))
    if "nps_detractor" in col_index:
        last_nps = (
            matrix[:, col_index["nps_response_last_value"]]
            if "nps_response_last_value" in col_index
            else np.full(n, np.nan)
        )
        put("nps_detractor", np.where(np.isnan(last_nps), np.nan, (last_nps <= 6).astype(float)))
    for col in set(fs.columns) - filled - set(fs.categorical_columns):  # none today; unknown, not garbage
        put(col, np.full(n, np.nan))

    # categorical columns come last in fs.columns, so the numeric block is a leading slice (no copy)
    n_numeric = len(fs.columns) - len(fs.categorical_columns)
    assert fs.columns[n_numeric:] == fs.categorical_columns
    result = pd.DataFrame(matrix[:, :n_numeric], columns=fs.columns[:n_numeric], copy=False)
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
    if _engine_threads(con) < 2:
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


def _engine_threads(con: duckdb.DuckDBPyConnection) -> int:
    """The threads this connection may use (1 on the online path), for the NumPy steps too."""
    return int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])


_NO_KEY = np.iinfo(np.int64).max  # the key of the placeholder event when there are none


def _prepare_events(timed: dict[str, np.ndarray], valued: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fetched keyed events (`churnml.buckets`, sorted by key) as NumPy arrays for the run search.

    ``days[i]`` counts the distinct keys (customer-type-days) before position ``i``, so a run
    ``[lo, hi)`` that starts and ends at a day boundary spans ``days[hi] - days[lo]`` active days.
    The values get a sentinel past the end, so every run's end is a valid start for `_ranged_sum`.
    Nothing else is copied: a fresh array of 40M events costs ~0.3 s here in first-touch page faults.
    """
    key = np.asarray(timed["key"], np.int64)
    last_us = np.asarray(timed["timestamp"]).astype("datetime64[us]", copy=False).view(np.int64)
    if not len(key):  # no events: one placeholder past every key keeps the indexing valid
        key, last_us = np.array([_NO_KEY]), np.zeros(1, np.int64)
    starts = np.empty(len(key), bool)
    starts[0] = True
    np.not_equal(key[1:], key[:-1], out=starts[1:])
    days = np.empty(len(key) + 1, np.int32 if len(key) < 2**31 - 1 else np.int64)
    days[0] = 0
    np.cumsum(starts, dtype=days.dtype, out=days[1:])
    values = np.empty(len(valued["key"]) + 1, np.float64)
    np.add(np.ma.getdata(valued["value"]), 0.0, out=values[:-1])  # -0.0 -> 0.0: sorted as equal, so alike
    values[-1] = 0.0
    return {"key": key, "last_us": last_us, "days": days,
            "value_key": np.asarray(valued["key"], np.int64), "values": values}  # fmt: skip


def _ranged_sum(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Sum of ``values[lo:hi]`` per pair, added up from the run itself (not prefix-sum differences).

    So a customer's sums use only that customer's values, in the same order on every path, and the
    training, batch and online features are bit-identical. ``hi`` must stay below ``len(values)``
    (the sentinel sees to it) and ascend, which keeps the in-between runs short.
    """
    idx = np.empty(2 * len(lo), dtype=np.int64)
    idx[0::2], idx[1::2] = lo, hi
    if not len(lo):
        return np.zeros(0)
    with np.errstate(over="ignore", invalid="ignore"):  # the unused in-between runs may overflow
        return np.where(hi > lo, np.add.reduceat(values, idx)[0::2], 0.0)


def _run_search(
    keys: np.ndarray, base: np.ndarray, rel: np.ndarray
) -> tuple[Callable[[int | None], np.ndarray], bool]:
    """``at(days_back)``: per row, the position of its first key on or after day ``rel - days_back``
    (clipped at day 0), in sorted ``keys``; and whether any key lies in the rows' range.

    Every search looks for a key in [min(base), max(base + rel)]: searching only that slice of the keys
    (one type's events) stays in cache better, and gives the same positions once offset.
    """
    needles = (base.min(), (base + np.maximum(rel, 0)).max()) if len(base) else (0, 0)
    offset, end = (int(i) for i in np.searchsorted(keys, needles, side="left"))
    part = keys[offset:end]

    def at(days_back: int | None) -> np.ndarray:
        target = base if days_back is None else base + np.maximum(rel - days_back, 0)
        return np.searchsorted(part, target, side="left") + offset

    return at, end > offset


def _event_features(
    events: dict[str, np.ndarray],
    base: np.ndarray,
    rel: np.ndarray,
    t_us: np.ndarray,
    windows: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """One event type's features per row, as ``{name pattern: values}``.

    ``base`` is each row's key for day 0 of its customer and this type, ``rel`` its date in days from
    day 0. Events are sorted by key, so a customer-type's events before the date are one contiguous
    run found by binary search (``at(None)`` is the run's start): windows are runs within it, counts
    are differences of positions, and the run's last event gives recency. Values are searched the same
    way in their own sorted array, whose run's last entry is the last value.
    """
    key = events["key"]
    at, _ = _run_search(key, base, rel)
    hi, first = at(0), at(None)
    lo = {w: at(w) for w in sorted({*windows, TREND, 2 * TREND})}

    def count(lo_: np.ndarray, hi_: np.ndarray) -> np.ndarray:
        return (hi_ - lo_).astype(np.float64)

    n_trend, n_prev = count(lo[TREND], hi), count(lo[2 * TREND], lo[TREND])
    total = count(first, hi)
    seen = hi > first
    last = np.where(seen, hi - 1, 0)
    first_seen = np.where(seen, first, 0)  # a valid index (key is never empty)
    days = events["days"]
    days_since = np.where(seen, (t_us - events["last_us"][last]) / 86_400e6, np.nan)

    values = events["values"]
    value_at, has_values = _run_search(events["value_key"], base, rel)
    if has_values:
        v_hi, v_first, v_trend, v_all = value_at(0), value_at(None), value_at(TREND), value_at(LOOKBACK)
        nv_trend, nv_all = (v_hi - v_trend).astype(np.float64), (v_hi - v_all).astype(np.float64)
        s_trend, s_all = _ranged_sum(values, v_trend, v_hi), _ranged_sum(values, v_all, v_hi)
        s_total = _ranged_sum(values, v_first, v_hi)
        v_seen = v_hi > v_first
        last_value = np.where(v_seen, values[np.where(v_seen, v_hi - 1, 0)], np.nan)
    else:  # no values of this type in the rows' range: sums are 0, means and the last value unknown
        nv_trend = nv_all = s_trend = s_all = s_total = np.zeros(len(base))
        last_value = np.full(len(base), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(
            total > 1, (key[last] - key[first_seen]) / (total - 1), np.nan
        )  # same group: day difference
        return {f"{{s}}_count_{w}d": count(lo[w], hi) for w in windows} | {
            "{s}_count_trend_ratio": np.where(n_prev > 0, n_trend / n_prev, np.nan),
            "{s}_count_trend_delta": n_trend - n_prev,
            f"{{s}}_active_days_{TREND}d": (days[hi] - days[lo[TREND]]).astype(np.float64),
            "days_since_last_{s}": days_since,
            "{s}_count_total": np.where(seen, total, np.nan),
            "{s}_mean_gap_days": gap,
            "{s}_overdue_ratio": np.where(gap > 0, days_since / np.where(gap > 0, gap, 1.0), np.nan),
            f"{{s}}_value_sum_{TREND}d": s_trend,
            f"{{s}}_value_sum_{LOOKBACK}d": s_all,
            f"{{s}}_value_mean_{TREND}d": np.where(nv_trend > 0, s_trend / nv_trend, np.nan),
            f"{{s}}_value_mean_{LOOKBACK}d": np.where(nv_all > 0, s_all / nv_all, np.nan),
            "{s}_last_value": last_value,
            "{s}_value_sum_total": s_total,
        }


DAY_FLAGS_MAX = 1 << 28  # customers x days up to which active days are flagged in a byte array


def _account_days(key: np.ndarray, n_keys: int, span: int) -> np.ndarray:
    """Sorted distinct (customer * span + day) with an event of any known type.

    One flag per customer-day when that array is small enough (O(n), no sort), else a sort.
    """
    block = n_keys * span  # key = type * block + customer * span + day
    if block <= DAY_FLAGS_MAX and len(key):
        # each type's keys are one sorted run: shift it into one reused buffer (no modulo, no new array)
        flags = np.zeros(block, dtype=bool)
        bounds = np.searchsorted(key, np.arange(int(key[-1]) // block + 2) * block)
        buffer = np.empty(int(np.diff(bounds).max()), np.int64)
        for ti, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            shifted = np.subtract(key[lo:hi], ti * block, out=buffer[: hi - lo])
            flags[shifted] = True
        return np.flatnonzero(flags).astype(np.int64, copy=False)
    days = key % block
    days.sort()  # np.unique hashes, 5x slower here
    return days[np.concatenate([[True], days[1:] != days[:-1]])] if len(days) else days


def _first_and_active_days(
    account_days: np.ndarray, ck: np.ndarray, t_rel: np.ndarray, span: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the customer's first active day (relative to day 0; ``span`` if none) and active days in 30.

    Searched in customer order (rows are not), so the binary searches stay in cache.
    """
    order = np.argsort(ck, kind="stable")
    base, rel = ck[order] * span, t_rel[order]
    padded = np.empty(len(account_days) + 1, np.int64)
    padded[:-1], padded[-1] = account_days, np.iinfo(np.int64).max
    first = padded[np.searchsorted(account_days, base)] - base
    hi = np.searchsorted(account_days, base + np.clip(rel, 0, None))
    lo = np.searchsorted(account_days, base + np.clip(rel - TREND, 0, None))
    first_rel, active = np.empty_like(first), np.empty_like(hi)
    first_rel[order], active[order] = np.where(first < span, first, span), hi - lo
    return first_rel, active


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
    frame = con.execute(sql).df().drop(columns="_ri")
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------------------- batch paths


def training_table(
    con: duckdb.DuckDBPyConnection, spec: DatasetSpec, feature_set: FeatureSet | None = None
) -> tuple[pd.DataFrame, FeatureSet]:
    """Labelled rows at the spec's observation dates with their features (training path)."""
    labels = build_labels(con, spec)
    labels = labels[labels["churned"].notna()].reset_index(drop=True)
    if labels.empty:
        raise ValueError("training table: no labelled rows; check observation dates against the data window")
    fs = feature_set or infer_feature_set(con, spec)
    table = build_features(con, labels[["customer_id", "observation_date"]], fs)
    table["churned"] = labels["churned"].astype("int8").to_numpy()
    table["churn_date"] = labels["churn_date"].to_numpy()
    return table, fs


def latest_date(con: duckdb.DuckDBPyConnection) -> pd.Timestamp:
    """The first midnight after the last event: features as of it see all the data."""
    return data_window(con).end.normalize() + pd.Timedelta(days=1)


def scoring_rows(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, as_of: pd.Timestamp) -> pd.DataFrame:
    """Customers active at ``as_of`` (batch scoring path): the same population rule as the labels."""
    population = build_labels(con, spec, dates=[pd.Timestamp(as_of).normalize()])
    return population[["customer_id", "observation_date"]].reset_index(drop=True)


# ----------------------------------------------------------------------------------------- online path

_FRAME_TYPES = {
    "customers": {"customer_id": "VARCHAR", "signup_date": "TIMESTAMP", "plan": "VARCHAR", "segment": "VARCHAR",
                  "mrr": "DOUBLE", "csm_owner": "VARCHAR"},
    "events": {"customer_id": "VARCHAR", "timestamp": "TIMESTAMP", "event_type": "VARCHAR", "value": "DOUBLE",
               "user_id": "VARCHAR"},
    "subscriptions": {"customer_id": "VARCHAR", "start": "TIMESTAMP", "end": "TIMESTAMP", "mrr": "DOUBLE",
                      "plan": "VARCHAR", "seats": "DOUBLE"},
}  # fmt: skip


def load_contract_frames(
    con: duckdb.DuckDBPyConnection,
    customers: pd.DataFrame | None,
    events: pd.DataFrame,
    subscriptions: pd.DataFrame | None = None,
    attributes: tuple[str, ...] = (),
) -> None:
    """Create the contract tables in ``con`` from already-clean frames (missing columns become NULL)."""
    frames = {"customers": customers, "events": events, "subscriptions": subscriptions}
    con.execute("DROP TABLE IF EXISTS event_volume")  # validation's summary of other events
    for table, frame in frames.items():
        types = dict(_FRAME_TYPES[table])
        if table == "customers":
            types |= {a: "" for a in attributes}
        if frame is None:
            cols = ", ".join(f"{quote_ident(c)} {t or 'VARCHAR'}" for c, t in types.items())
            con.execute(f"CREATE OR REPLACE TABLE {table} ({cols})")
            continue
        name = f"_{table}_frame"
        # a copy: DuckDB cannot read a column that is a view with a negative stride (a reversed slice,
        # `df.iloc[::-1]`), and fails with a bare "std::bad_cast"
        con.register(name, frame.copy())
        try:
            cols = ", ".join(
                (f"CAST({quote_ident(c)} AS {t})" if t else quote_ident(c)) + f" AS {quote_ident(c)}"
                if c in frame.columns else f"CAST(NULL AS {t or 'VARCHAR'}) AS {quote_ident(c)}"
                for c, t in types.items()
            )  # fmt: skip
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {cols} FROM {name}")
        finally:
            con.unregister(name)


def features_from_frames(
    feature_set: FeatureSet,
    as_of: pd.Timestamp,
    events: pd.DataFrame,
    customers: pd.DataFrame | None = None,
    subscriptions: pd.DataFrame | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Features for customers given their raw behaviour (the online path): same code as training.

    Every customer in ``customers`` (or, without it, in ``events``) gets a row as of ``as_of``.
    """
    settings = settings or Settings(duckdb_memory_limit="512MB", duckdb_threads=1)
    con = connect(settings, spill=False)
    try:
        load_contract_frames(con, customers, events, subscriptions, feature_set.attributes)
        ids = customers["customer_id"] if customers is not None else pd.Series(events["customer_id"].unique())
        rows = pd.DataFrame(
            {"customer_id": ids.astype(str).to_numpy(), "observation_date": pd.Timestamp(as_of)}
        )
        return build_features(con, rows, feature_set)
    finally:
        con.close()
