"""Features on Spark: the Ibis definitions run as Spark SQL, the NumPy step per customer partition.

The feature definitions have two halves (`churnml.features.engine`), and both run on Spark:

1. the relational half, the Ibis expressions of `churnml.buckets` (keyed events and values) and
   `churnml.accounts` (account state as of each date, with the distinct users of `user_table`),
   compiled to Spark SQL and run by Spark over the whole contract tables: joins, filters, the window
   that picks the subscription in force, all spread over the executors;
2. the NumPy half, `features_from_events`, the code the DuckDB engine and the online path run, inside
   Spark executors (``mapInArrow``) on one customer partition at a time: every feature of a (customer,
   date) row depends on that customer's rows alone. Each partition gets its customers' rows, keyed
   events, keyed values and account state (one long Arrow stream: ``mapInArrow`` takes one input, and a
   union partitioned by the customer key keeps each customer's rows together in one shuffle), sorts
   its share by the definitions' own orders and renumbers its customers densely.

No global sort: the DuckDB engine sorts all events by key, Spark sorts each partition. The driver
holds only the rows, the customer and type keys and the day numbering; the features come back to it.
A `PartitionStep` runs more per-row work on each partition's features before they travel back: batch
scoring puts the model, its SHAP reasons and plays there (`churnml.score.score_and_explain`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from churnml.accounts import CUSTOMERS, ROWS, SUBSCRIPTIONS, account_table
from churnml.buckets import (
    DAYS,
    EVENT_ORDER,
    EVENTS,
    KEYS,
    TYPES,
    USER_EVENTS,
    VALUE_ORDER,
    keyed_events,
    keyed_values,
    user_table,
)
from churnml.data.tables import ContractTables
from churnml.engine import quote_literal
from churnml.features.definitions import LOOKBACK, TREND, slug
from churnml.features.engine import EventShape, date_bounds, feature_rows, features_from_events
from churnml.features.runs import prepare_events
from churnml.features.sets import FeatureSet

if TYPE_CHECKING:  # pyspark is installed where Spark runs (the dev extra here)
    import ibis
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["PartitionStep", "SparkFeatures", "build_features_spark", "spark_session"]

_TABLES = ("events", "customers", "subscriptions")
_ROW_INDEX = "_ri"
_KINDS = ("rows", "events", "values", "accounts")
_PARTITION = "_partition"  # which partition computed a row


def spark_session(master: str = "local[2]", local_dir: Path | None = None) -> SparkSession:
    """A Spark session in UTC (as DuckDB works); on ``local[N]``, bound to 127.0.0.1."""
    import os
    import sys

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors import churnml from this environment
    builder = (
        SparkSession.builder.master(master).appName("churnml")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )  # fmt: skip
    if master.startswith("local"):
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config(
            "spark.driver.host", "127.0.0.1"
        )
    if local_dir is not None:
        builder = builder.config("spark.local.dir", str(local_dir))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


@dataclass(frozen=True)
class PartitionStep:
    """Per-row work done on each partition's features inside the executor, before they travel back."""

    run: Callable[[pd.DataFrame], pd.DataFrame]  # features -> new columns, one row per row, same order
    schema: pa.Schema  # of the new columns


@dataclass(frozen=True)
class _Plan:
    """What every partition needs besides its rows: the feature set, the day numbering, the schemas."""

    fs: FeatureSet
    shape: EventShape
    account_columns: tuple[str, ...]
    schema: pa.Schema
    step: PartitionStep | None = None


def _sql(spark: SparkSession, expr: ibis.Table) -> DataFrame:
    """An Ibis definition as Spark SQL, run by Spark."""
    import ibis

    ibis.pyspark  # noqa: B018 - loading the backend registers its SQL compiler's options
    return spark.sql(ibis.to_sql(expr, dialect="pyspark"))


def _export(tables: ContractTables, spark: SparkSession, folder: Path) -> None:
    """The contract tables as Parquet, the form a cluster reads them in, and as Spark views."""
    for name in _TABLES:
        path = folder / f"{name}.parquet"
        tables.con.execute(f"COPY {name} TO {quote_literal(str(path))} (FORMAT parquet)")
        spark.read.parquet(str(path)).createOrReplaceTempView(name)


def _key_views(spark: SparkSession, frame: pd.DataFrame, ids: np.ndarray, fs: FeatureSet) -> None:
    """The driver's keys as Spark views: customers (``_keys``), types, rows and each date's days (from
    Arrow: Spark's conversion from pandas trips over pandas 3's time stamps)."""
    us = pa.timestamp("us")
    types = list(fs.event_types)
    dates = np.unique(frame["t"].to_numpy().astype("datetime64[us]"))
    ages = np.arange(1, LOOKBACK + 1)
    views = {
        "_keys": pa.table({"customer_id": pa.array(ids.astype(str)), "ck": np.arange(len(ids), dtype=np.int64)}),
        "_types": pa.table({"event_type": pa.array(types, pa.string()),
                            "ti": pa.array(np.arange(len(types), dtype=np.int64))}),
        "_rows": pa.table({"_ri": frame["_ri"].to_numpy(np.int64), "ck": frame["ck"].to_numpy(np.int64),
                           "customer_id": pa.array(frame["customer_id"].astype(str).to_numpy(object), pa.string()),
                           "t": pa.array(frame["t"].to_numpy().astype("datetime64[us]"), us)}),
        "_daymap": pa.table({
            "t": pa.array(np.repeat(dates, len(ages)), us),
            "day": pa.array((np.repeat(dates, len(ages)) - np.tile(ages, len(dates)).astype("timedelta64[D]"))
                            .astype("datetime64[D]"), pa.date32()),
            "age": pa.array(np.tile(ages, len(dates)).astype(np.int64)),
        }),
    }  # fmt: skip
    for name, table in views.items():
        spark.createDataFrame(table).createOrReplaceTempView(name)


def _relational(
    spark: SparkSession, frame: pd.DataFrame, fs: FeatureSet
) -> tuple[EventShape, list[DataFrame]]:
    """1. the Ibis definitions on Spark: keyed events and values, account state (unsorted, with ``ck``)."""
    import ibis

    first_t, last_t, dense = date_bounds(frame["t"])
    spark.sql(
        "CREATE OR REPLACE TEMP VIEW _events_before AS SELECT customer_id, `timestamp`, event_type, value "
        f"FROM events WHERE `timestamp` < TIMESTAMP {last_t}"
    )
    first_day = spark.sql(
        "SELECT min(datediff(to_date(`timestamp`), DATE '1970-01-01')) FROM _events_before"
    ).collect()[0][0]
    shape = EventShape.of(first_day, frame["t"])
    shape = EventShape(int(frame["ck"].max()) + 1, shape.origin, shape.span)
    spark.sql(
        "CREATE OR REPLACE TEMP VIEW _user_events AS SELECT customer_id, `timestamp`, user_id FROM events "
        f"WHERE user_id IS NOT NULL AND `timestamp` >= TIMESTAMP {first_t} - INTERVAL {TREND} DAYS "
        f"AND `timestamp` < TIMESTAMP {last_t}"
    )
    keyed = {"n_keys": shape.n_keys, "span": shape.span, "origin_day": shape.origin}
    tables = (ibis.table(EVENTS, name="_events_before"), ibis.table(KEYS, name="_keys"),
              ibis.table(TYPES, name="_types"))  # fmt: skip
    categorical = set(fs.categorical_attributes)
    profile = {a: "string" if a in categorical else "float64" for a in fs.attributes}
    users = user_table(
        ibis.table(USER_EVENTS, name="_user_events"), ibis.table(KEYS, name="_keys"),
        ibis.table(DAYS, name="_daymap"), window=TREND, distinct_first=dense,
    )  # fmt: skip
    accounts = account_table(
        ibis.table(ROWS, name="_rows"), ibis.table(ibis.schema({**CUSTOMERS, **profile}), name="customers"),
        ibis.table(SUBSCRIPTIONS, name="subscriptions"), users, attributes=fs.attributes,
        attribute_columns=tuple(f"attr_{slug(a)}" for a in fs.attributes), term_months=int(fs.term_months),
        ordered=False,
    )  # fmt: skip
    frames = [_sql(spark, keyed_events(*tables, **keyed)), _sql(spark, keyed_values(*tables, **keyed)),
              _sql(spark, accounts)]  # fmt: skip
    return shape, frames


def _long_stream(parts: dict[str, DataFrame], partitions: int) -> DataFrame:
    """The rows, keyed events, keyed values and account state as one frame, each row tagged with its
    kind and partitioned by its customer key."""
    from pyspark.sql import functions as F

    tagged = [
        frame.select(F.lit(kind).alias("kind"), F.col("ck").cast("long").alias("ck"),
                     *[F.col(c).alias(f"{kind}__{c}") for c in frame.columns if c != "ck"])
        for kind, frame in parts.items()
    ]  # fmt: skip
    stream = tagged[0]
    for frame in tagged[1:]:
        stream = stream.unionByName(frame, allowMissingColumns=True)
    return stream.repartition(partitions, "ck")


def _naive(table: pa.Table) -> pa.Table:
    """Zone-aware timestamps (Spark's) as naive UTC, as DuckDB's contract tables hold them."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            naive = table.column(i).cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
            table = table.set_column(i, pa.field(field.name, pa.timestamp("us")), naive)
    return table


def _split(batches: list[pa.RecordBatch]) -> dict[str, pd.DataFrame]:
    """One partition's long stream split back into its kinds, with their own column names."""
    import pyarrow.compute as pc

    stream = pa.Table.from_batches(batches)
    out = {}
    for kind in _KINDS:
        part = stream.filter(pc.equal(stream["kind"], kind))
        columns = ["ck", *[c for c in stream.column_names if c.startswith(f"{kind}__")]]
        part = part.select(columns).rename_columns([c.split("__", 1)[-1] for c in columns])
        out[kind] = _naive(part).to_pandas()
    return out


def _local_events(parts: dict[str, pd.DataFrame], shape: EventShape, ck: np.ndarray) -> dict[str, np.ndarray]:
    """The partition's keyed events and values, renumbered for its customers ``ck`` (ascending, so
    the order of keys is kept) and sorted by the definitions' orders, as `prepare_events` makes them."""
    block = shape.n_keys * shape.span

    def rekey(frame: pd.DataFrame) -> np.ndarray:
        key = frame["key"].to_numpy(np.int64)
        local = np.searchsorted(ck, frame["ck"].to_numpy(np.int64))
        return ((key // block) * len(ck) + local) * shape.span + key % shape.span

    def ordered(frame: pd.DataFrame, order: tuple[str, ...]) -> dict[str, np.ndarray]:
        columns = {c: frame[c].to_numpy() for c in order}
        columns["key"] = rekey(frame)
        columns["timestamp"] = columns["timestamp"].astype("datetime64[us]").view(np.int64)
        at = np.lexsort([columns[c] for c in reversed(order)])
        return {c: v[at] for c, v in columns.items()}

    return prepare_events(ordered(parts["events"], EVENT_ORDER), ordered(parts["values"], VALUE_ORDER))


def _features_of_partition(plan: _Plan):  # noqa: ANN202
    """The function each executor runs on its partitions: `features_from_events`, as the DuckDB engine."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        parts = _split(batches)
        rows = parts["rows"].sort_values(_ROW_INDEX, ignore_index=True)
        if rows.empty:
            return
        ck = np.unique(rows["ck"].to_numpy(np.int64))
        frame = rows.assign(ck=np.searchsorted(ck, rows["ck"].to_numpy(np.int64)))
        frame["t"] = frame["t"].astype("datetime64[us]")
        account = parts["accounts"].sort_values(_ROW_INDEX, ignore_index=True)
        if not np.array_equal(account[_ROW_INDEX].to_numpy(), rows[_ROW_INDEX].to_numpy()):
            raise RuntimeError("features on Spark: a partition's account state does not match its rows")
        events = _local_events(parts, plan.shape, ck)
        shape = EventShape(len(ck), plan.shape.origin, plan.shape.span)
        account = account[list(plan.account_columns)]
        features = features_from_events(frame, plan.fs, events, shape, lambda: account, threads=1)
        if plan.step is not None:
            features = pd.concat([features, plan.step.run(features).reset_index(drop=True)], axis=1)
        features.insert(0, _ROW_INDEX, rows[_ROW_INDEX].to_numpy())
        features[_PARTITION] = np.int32(TaskContext.get().partitionId())
        yield from pa.Table.from_pandas(features, schema=plan.schema, preserve_index=False).to_batches()

    return run


def _result_schema(fs: FeatureSet, step: PartitionStep | None) -> pa.Schema:
    categorical = set(fs.categorical_columns)
    clash = (
        set(step.schema.names) & {"customer_id", "observation_date", _ROW_INDEX, _PARTITION, *fs.columns}
        if step
        else ()
    )
    if clash:
        raise ValueError(
            f"features on Spark: a partition step's column(s) {sorted(clash)} clash with the features"
        )
    return pa.schema(
        [(_ROW_INDEX, pa.int64()), ("customer_id", pa.string()), ("observation_date", pa.timestamp("us")),
         *[(c, pa.string() if c in categorical else pa.float64()) for c in fs.columns],
         *(step.schema if step else []), (_PARTITION, pa.int32())]
    )  # fmt: skip


@dataclass(frozen=True)
class SparkFeatures:
    """The Spark engine as a `churnml.features.batch.FeatureBuilder`: a session and how many customer
    partitions to cut the rows into."""

    spark: SparkSession
    partitions: int = 8
    staging: Path | None = None  # a folder every executor can read (see `Settings.spark_staging`)

    def __call__(self, tables: ContractTables, rows: pd.DataFrame, fs: FeatureSet) -> pd.DataFrame:
        return build_features_spark(self.spark, tables, rows, fs, self.partitions, self.staging)

    def with_step(
        self, tables: ContractTables, rows: pd.DataFrame, fs: FeatureSet, step: PartitionStep
    ) -> tuple[pd.DataFrame, int]:
        """The features with ``step``'s columns computed in each partition, and how many partitions ran."""
        result = _on_spark(self.spark, tables, rows, fs, self.partitions, step, self.staging)
        return result.drop(columns=_PARTITION), int(result[_PARTITION].nunique())


def build_features_spark(
    spark: SparkSession, tables: ContractTables, rows: pd.DataFrame, fs: FeatureSet, partitions: int = 8,
    staging: Path | None = None,
) -> pd.DataFrame:  # fmt: skip
    """`build_features` of ``rows`` computed on Spark: the same table, in the rows' order, as the DuckDB
    engine gives. The contract tables go to a temporary folder under ``staging`` for the executors."""
    return _on_spark(spark, tables, rows, fs, partitions, None, staging).drop(columns=_PARTITION)


def _on_spark(
    spark: SparkSession, tables: ContractTables, rows: pd.DataFrame, fs: FeatureSet, partitions: int,
    step: PartitionStep | None, staging: Path | None = None,
) -> pd.DataFrame:  # fmt: skip
    from pyspark.sql.pandas.types import from_arrow_schema

    frame = feature_rows(rows)
    codes, ids = pd.factorize(frame["customer_id"], sort=True)
    frame = frame.assign(ck=codes.astype(np.int64))
    schema = _result_schema(fs, step)
    if frame.empty:  # no rows: the DuckDB engine's empty table (its columns' types), and the step's
        from churnml.features.engine import build_features

        empty = pa.schema([*(step.schema if step else []), (_PARTITION, pa.int32())]).empty_table()
        return pd.concat([build_features(tables, rows, fs), empty.to_pandas()], axis=1)
    if staging is not None:
        Path(staging).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="churnml-spark-", dir=staging) as folder:
        _export(tables, spark, Path(folder))
        _key_views(spark, frame, np.asarray(ids), fs)
        shape, (events, values, accounts) = _relational(spark, frame, fs)
        rows_view = spark.table("_rows")
        stream = _long_stream(
            {"rows": rows_view, "events": events, "values": values, "accounts": accounts}, partitions
        )
        account_columns = tuple(c for c in accounts.columns if c not in ("ck", _ROW_INDEX))
        plan = _Plan(fs, shape, account_columns, schema, step)
        # the stream's timestamps must reach the executors as timestamps without a zone (NTZ)
        result = stream.mapInArrow(_features_of_partition(plan), from_arrow_schema(schema)).toArrow()
    result = result.sort_by(_ROW_INDEX)
    if result.num_rows != len(rows):
        raise RuntimeError(f"features on Spark: {result.num_rows} rows came back for {len(rows)} asked")
    return _naive(result).drop_columns([_ROW_INDEX]).to_pandas()
