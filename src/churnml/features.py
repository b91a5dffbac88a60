"""Point-in-time features: one definition for training, batch scoring and the online endpoint.

Every feature of a row (customer_id, observation_date) is computed from contract rows strictly
before the observation date (a midnight), so nothing that happens on or after it can leak in.

The computation stays long and narrow in DuckDB and pivots in NumPy:

1. events are bucketed per (customer, event type, day): count, value sum, last value;
2. a small day map joins each bucket to the observation dates whose 90-day window holds that day,
   and one GROUP BY gives per (row, event type) window counts, sums, active days and trends;
3. an ASOF join finds each type's last event before the date at any distance (recency, last value);
4. subscriptions give plan, MRR, seats and renewal as of the date;
5. the long result is scattered into a NumPy matrix (cheap) rather than pivoted in SQL (costly).

Which event types, value columns and attributes exist is fixed at training time in a
:class:`FeatureSet` saved with the model, so scoring always produces the same columns.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import duckdb
import numpy as np
import pandas as pd

from churnml.config import Settings
from churnml.engine import connect, quote_ident, quote_literal
from churnml.labels import build_labels, data_window
from churnml.spec import DatasetSpec

__all__ = [
    "WINDOWS",
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
        return cls(**data)


def infer_feature_set(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> FeatureSet:
    """Read the event types, valued types and attribute kinds from the loaded contract tables."""
    rows = con.execute("SELECT event_type, count(value) > 0 FROM events GROUP BY 1 ORDER BY 1").fetchall()
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


_NUMERIC_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "UTINYINT",
                  "USMALLINT", "UINTEGER", "UBIGINT"}  # fmt: skip


def _floats(values: np.ndarray, fill: float) -> np.ndarray:
    """A fetched column as float64, NULLs (masked entries) replaced by ``fill``."""
    if isinstance(values, np.ma.MaskedArray):
        return values.astype(np.float64).filled(fill)
    return np.asarray(values, dtype=np.float64)


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
    return pd.DataFrame({"_ri": np.arange(len(rows), dtype=np.int64),
                         "customer_id": rows["customer_id"].astype(str).to_numpy(), "t": dates.to_numpy()})  # fmt: skip


def build_features(
    con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, feature_set: FeatureSet
) -> pd.DataFrame:
    """Features for each (customer_id, observation_date) row, from the contract tables in ``con``.

    Returns the rows (same order) with one column per ``feature_set.columns``.
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
    type_index = {t: i for i, t in enumerate(types)}
    # Integer keys for customers and event types: every join and GROUP BY below runs on integers.
    con.register("_rows_df", frame)
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _keys AS SELECT customer_id, CAST(row_number() OVER () AS INTEGER) AS ck "
            "FROM (SELECT DISTINCT customer_id FROM _rows_df)"
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _rows AS SELECT r._ri, k.ck, r.customer_id, CAST(r.t AS TIMESTAMP) AS t "
            "FROM _rows_df r JOIN _keys k ON r.customer_id = k.customer_id"
        )
    finally:
        con.unregister("_rows_df")
    values_sql = ", ".join(f"({quote_literal(t)}, {i})" for t, i in type_index.items())
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _types AS SELECT * FROM (VALUES {values_sql}) v(event_type, ti)"
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _daymap AS
        SELECT d.t, CAST(d.t - INTERVAL (k) DAY AS DATE) AS day, k AS age
        FROM (SELECT DISTINCT t FROM _rows) d, range(1, {LOOKBACK + 1}) r(k)"""
    )
    # Literal bounds, not scalar subqueries: DuckDB pushes literals into the scan (3x faster here).
    first_t, last_t = quote_literal(str(frame["t"].min())), quote_literal(str(frame["t"].max()))
    # 1. daily buckets of every event before the last date, for the rows' customers and known types
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _buckets AS
        SELECT k.ck, ty.ti, CAST(e."timestamp" AS DATE) AS day, count(*) AS n,
               sum(e.value) AS s, count(e.value) AS nv, arg_max(e.value, e."timestamp") AS last_value,
               max(e."timestamp") AS last_ts
        FROM events e
        JOIN _keys k ON e.customer_id = k.customer_id
        JOIN _types ty ON e.event_type = ty.event_type
        WHERE e."timestamp" < TIMESTAMP {last_t}
        GROUP BY ALL"""
    )
    # column-major: each feature is one contiguous column, cheap to fill and to hand to pandas
    matrix = np.full((n, len(fs.columns)), np.nan, order="F")
    col_index = {c: i for i, c in enumerate(fs.columns)}

    def scatter(ri: np.ndarray, type_idx: np.ndarray, suffix_of: dict[str, np.ndarray]) -> None:
        for t, ti in type_index.items():
            sel = type_idx == ti
            if not sel.any():
                continue
            s = slug(t)
            for name, values in suffix_of.items():
                col = name.format(s=s)
                if col in col_index:
                    matrix[ri[sel], col_index[col]] = values[sel]

    # 2. window aggregates per (row, type)
    w_sql = ", ".join(f"sum(b.n) FILTER (m.age <= {w}) AS n{w}" for w in fs.windows)
    long = con.execute(
        f"""SELECT r._ri, b.ti, {w_sql},
               sum(b.n) FILTER (m.age > {TREND} AND m.age <= {2 * TREND}) AS nprev,
               count(*) FILTER (m.age <= {TREND}) AS days_trend,
               sum(b.s) FILTER (m.age <= {TREND}) AS s_trend, sum(b.s) AS s_all,
               sum(b.nv) FILTER (m.age <= {TREND}) AS nv_trend, sum(b.nv) AS nv_all
        FROM _buckets b
        JOIN _daymap m ON b.day = m.day
        JOIN _rows r ON r.ck = b.ck AND r.t = m.t
        GROUP BY r._ri, b.ti"""
    ).fetchnumpy()
    ri = np.asarray(long["_ri"], dtype=np.int64)
    ti = np.asarray(long["ti"], dtype=np.int64)
    # rows x types with no event in the window are zeros, not unknown
    for t in types:
        s = slug(t)
        for col in [f"{s}_count_{w}d" for w in fs.windows] + [
            f"{s}_active_days_{TREND}d",
            f"{s}_count_trend_delta",
        ]:
            matrix[:, col_index[col]] = 0.0
        if t in fs.valued_types:
            for col in (f"{s}_value_sum_{TREND}d", f"{s}_value_sum_{LOOKBACK}d", f"{s}_value_sum_total"):
                matrix[:, col_index[col]] = 0.0

    def num(key: str) -> np.ndarray:
        return _floats(long[key], 0.0)

    n_trend, n_prev = num(f"n{TREND}"), num("nprev")
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {f"{{s}}_count_{w}d": num(f"n{w}") for w in fs.windows}
        values |= {
            "{s}_count_trend_ratio": np.where(n_prev > 0, n_trend / n_prev, np.nan),
            "{s}_count_trend_delta": n_trend - n_prev,
            f"{{s}}_active_days_{TREND}d": num("days_trend"),
            f"{{s}}_value_sum_{TREND}d": num("s_trend"),
            f"{{s}}_value_sum_{LOOKBACK}d": num("s_all"),
            f"{{s}}_value_mean_{TREND}d": np.where(
                num("nv_trend") > 0, num("s_trend") / num("nv_trend"), np.nan
            ),
            f"{{s}}_value_mean_{LOOKBACK}d": np.where(
                num("nv_all") > 0, num("s_all") / num("nv_all"), np.nan
            ),
        }
    scatter(ri, ti, values)

    # 3. last event of each type before the date, at any distance
    last = con.execute(
        """WITH grid AS (SELECT r._ri, r.ck, r.t, ty.ti FROM _rows r CROSS JOIN _types ty),
             b AS (SELECT ck, ti, CAST(day AS TIMESTAMP) AS day_ts, last_ts, last_value,
                          sum(n) OVER w AS cum_n, sum(s) OVER w AS cum_s, min(day) OVER w AS first_day
                   FROM _buckets WINDOW w AS (PARTITION BY ck, ti ORDER BY day ROWS UNBOUNDED PRECEDING))
        SELECT g._ri, g.ti, epoch(g.t - b.last_ts) / 86400.0 AS days_since, b.last_value, b.cum_n, b.cum_s,
               CASE WHEN b.cum_n > 1
                    THEN (CAST(b.day_ts AS DATE) - b.first_day) / (b.cum_n - 1) END AS mean_gap
        FROM grid g ASOF JOIN b ON g.ck = b.ck AND g.ti = b.ti AND g.t > b.day_ts"""
    ).fetchnumpy()
    ri = np.asarray(last["_ri"], dtype=np.int64)
    ti = np.asarray(last["ti"], dtype=np.int64)
    gap = _floats(last["mean_gap"], np.nan)
    scatter(ri, ti, {
        "days_since_last_{s}": _floats(last["days_since"], np.nan),
        "{s}_count_total": _floats(last["cum_n"], 0.0),
        "{s}_mean_gap_days": gap,
        "{s}_overdue_ratio": np.where(gap > 0, _floats(last["days_since"], np.nan) / np.where(gap > 0, gap, 1.0), np.nan),
        "{s}_value_sum_total": _floats(last["cum_s"], 0.0),
        "{s}_last_value": _floats(last["last_value"], np.nan),
    })  # fmt: skip

    # 4. account state as of the date
    account = _account_frame(con, fs, first_t, last_t)
    for col in fs.account_columns:
        if col in account:
            matrix[:, col_index[col]] = account[col].to_numpy(dtype=np.float64, na_value=np.nan)
    for col in fs.numeric_attribute_columns:
        matrix[:, col_index[col]] = account[col].to_numpy(dtype=np.float64, na_value=np.nan)
    if "nps_detractor" in col_index:
        last_nps = (
            matrix[:, col_index["nps_response_last_value"]]
            if "nps_response_last_value" in col_index
            else np.full(n, np.nan)
        )
        matrix[:, col_index["nps_detractor"]] = np.where(
            np.isnan(last_nps), np.nan, (last_nps <= 6).astype(float)
        )

    # categorical columns come last in fs.columns, so the numeric block is a leading slice (no copy)
    n_numeric = len(fs.columns) - len(fs.categorical_columns)
    assert fs.columns[n_numeric:] == fs.categorical_columns
    result = pd.DataFrame(matrix[:, :n_numeric], columns=fs.columns[:n_numeric], copy=False)
    result.insert(0, "observation_date", out["observation_date"].to_numpy())
    result.insert(0, "customer_id", out["customer_id"].to_numpy())
    for c in fs.categorical_columns:
        values = account[c].astype("object")
        result[c] = values.where(values.notna(), None).to_numpy()
    return result


def _account_frame(con: duckdb.DuckDBPyConnection, fs: FeatureSet, first_t: str, last_t: str) -> pd.DataFrame:
    """Per-row account features: tenure, activity, users, subscription state, attributes (row order)."""
    attrs = ", ".join(f"c.{quote_ident(a)} AS {quote_ident('attr_' + slug(a))}" for a in fs.attributes)
    attrs = (", " + attrs) if attrs else ""
    term = int(fs.term_months)
    frame = con.execute(
        f"""
        WITH first_seen AS (SELECT ck, min(day) AS first_day FROM _buckets GROUP BY 1),
        active AS (
            SELECT r._ri, count(*) AS active_days
            FROM (SELECT DISTINCT ck, day FROM _buckets) b
            JOIN _daymap m ON b.day = m.day AND m.age <= 30
            JOIN _rows r ON r.ck = b.ck AND r.t = m.t
            GROUP BY 1),
        users AS (
            SELECT r._ri, count(DISTINCT u.user_id) AS users
            FROM (SELECT DISTINCT k.ck, CAST(e."timestamp" AS DATE) AS day, e.user_id
                  FROM events e JOIN _keys k ON e.customer_id = k.customer_id
                  WHERE e.user_id IS NOT NULL
                    AND e."timestamp" >= TIMESTAMP {first_t} - INTERVAL 30 DAY
                    AND e."timestamp" < TIMESTAMP {last_t}) u
            JOIN _daymap m ON u.day = m.day AND m.age <= 30
            JOIN _rows r ON r.ck = u.ck AND r.t = m.t
            GROUP BY 1),
        subs AS (SELECT customer_id, "start", mrr, plan, seats FROM subscriptions),
        sub_now AS (
            SELECT r._ri, s.mrr, s.plan, s.seats
            FROM _rows r ASOF LEFT JOIN subs s ON r.customer_id = s.customer_id AND r.t > s."start"),
        sub_before AS (
            SELECT r._ri, s.mrr
            FROM (SELECT _ri, customer_id, t - INTERVAL 90 DAY AS t90 FROM _rows) r
            ASOF LEFT JOIN subs s ON r.customer_id = s.customer_id AND r.t90 > s."start"),
        first_sub AS (SELECT customer_id, min("start") AS first_start FROM subscriptions GROUP BY 1),
        base AS (
            SELECT r._ri, r.t,
                   coalesce(c.signup_date, CASE WHEN fs.first_start < r.t THEN fs.first_start END,
                            CASE WHEN f.first_day < r.t THEN CAST(f.first_day AS TIMESTAMP) END) AS since,
                   CASE WHEN fs.first_start < r.t THEN fs.first_start ELSE c.signup_date END AS anchor,
                   c.plan AS profile_plan, c.segment, c.mrr AS profile_mrr {attrs}
            FROM _rows r
            LEFT JOIN customers c ON c.customer_id = r.customer_id
            LEFT JOIN first_seen f ON f.ck = r.ck
            LEFT JOIN first_sub fs ON fs.customer_id = r.customer_id),
        renew AS (
            SELECT _ri, anchor + to_months(({term} * (date_diff('month', anchor, t) // {term}))::INTEGER) AS cand,
                   anchor, t
            FROM base WHERE anchor IS NOT NULL AND anchor < t)
        SELECT b.*, epoch(b.t - b.since) / 86400.0 AS tenure_days,
               coalesce(a.active_days, 0) AS active_days_30d,
               u.users AS active_users_30d,
               coalesce(sn.mrr, b.profile_mrr) AS mrr,
               sn.mrr - sb.mrr AS mrr_change_90d,
               sn.seats AS seats,
               coalesce(u.users, 0) / NULLIF(sn.seats, 0) AS seats_used_ratio,
               coalesce(sn.plan, b.profile_plan) AS plan,
               epoch(CASE WHEN rn.cand > rn.t THEN rn.cand ELSE rn.anchor + to_months(({term} * (date_diff('month', rn.anchor, rn.t) // {term} + 1))::INTEGER) END
                     - rn.t) / 86400.0 AS days_to_renewal
        FROM base b
        LEFT JOIN active a ON a._ri = b._ri
        LEFT JOIN users u ON u._ri = b._ri
        LEFT JOIN sub_now sn ON sn._ri = b._ri
        LEFT JOIN sub_before sb ON sb._ri = b._ri
        LEFT JOIN renew rn ON rn._ri = b._ri
        ORDER BY b._ri"""
    ).df()
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
    for table, frame in frames.items():
        types = dict(_FRAME_TYPES[table])
        if table == "customers":
            types |= {a: "" for a in attributes}
        if frame is None:
            cols = ", ".join(f"{quote_ident(c)} {t or 'VARCHAR'}" for c, t in types.items())
            con.execute(f"CREATE OR REPLACE TABLE {table} ({cols})")
            continue
        name = f"_{table}_frame"
        con.register(name, frame)
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
