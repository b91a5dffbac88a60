"""Features on Spark: `build_features` run per customer partition inside Spark executors (``mapInArrow``).

Every feature of a (customer, date) row depends on that customer's events, profile and subscriptions
alone (and on the feature set, which carries everything fitted). So the contract tables are cut by a
hash of the customer id into partitions; Spark moves each customer's rows of all four tables (the rows
to compute, events, customers, subscriptions) to one partition; there, `build_features`, the same code
the DuckDB engine and the online path run, computes them on an in-process DuckDB holding only that
partition. Spark supplies what one machine lacks: data spread over many machines, the shuffle, and
retries of lost partitions.

The four tables travel as one long Arrow stream (one ``kind`` column, each table's columns prefixed):
``mapInArrow`` takes one input, and a union keeps each partition's rows together in one pass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from churnml.data.tables import ContractTables
from churnml.engine import quote_literal
from churnml.features.sets import FeatureSet

if TYPE_CHECKING:  # pyspark is installed where Spark runs (the dev extra here)
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["build_features_spark", "spark_session"]

_TABLES = ("events", "customers", "subscriptions")
_ROW_INDEX = "_ri"


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


def _export(tables: ContractTables, rows: pd.DataFrame, folder: Path) -> dict[str, Path]:
    """The contract tables and the rows as Parquet, the form a cluster reads them in."""
    paths = {}
    for name in _TABLES:
        paths[name] = folder / f"{name}.parquet"
        tables.con.execute(f"COPY {name} TO {quote_literal(str(paths[name]))} (FORMAT parquet)")
    paths["rows"] = folder / "rows.parquet"
    frame = pd.DataFrame({_ROW_INDEX: np.arange(len(rows), dtype=np.int64),
                          "customer_id": rows["customer_id"].astype(str).to_numpy(),
                          "observation_date": pd.to_datetime(rows["observation_date"]).to_numpy()})  # fmt: skip
    frame.to_parquet(paths["rows"], index=False)
    return paths


def _long_stream(spark: SparkSession, paths: dict[str, Path], partitions: int) -> DataFrame:
    """The four tables as one frame, each row tagged with its table and its customer's partition."""
    from pyspark.sql import functions as F

    parts = []
    for name, path in paths.items():
        frame = spark.read.parquet(str(path))
        frame = frame.select(
            F.lit(name).alias("kind"), F.col("customer_id").cast("string").alias("customer_id"),
            *[F.col(c).alias(f"{name}__{c}") for c in frame.columns if c != "customer_id"],
        )  # fmt: skip
        parts.append(frame)
    stream = parts[0]
    for frame in parts[1:]:
        stream = stream.unionByName(frame, allowMissingColumns=True)
    return stream.repartition(partitions, "customer_id")


def _naive(table: pa.Table) -> pa.Table:
    """Zone-aware timestamps (Spark's) as naive UTC, as DuckDB's contract tables hold them."""
    for i, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            naive = table.column(i).cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
            table = table.set_column(i, pa.field(field.name, pa.timestamp("us")), naive)
    return table


def _partition_tables(batches: list[pa.RecordBatch]) -> dict[str, pa.Table]:
    """One partition's long stream split back into its tables, with their own column names."""
    import pyarrow.compute as pc

    stream = pa.Table.from_batches(batches)
    out = {}
    for name in ("rows", *_TABLES):
        part = stream.filter(pc.equal(stream["kind"], name))
        columns = ["customer_id", *[c for c in stream.column_names if c.startswith(f"{name}__")]]
        part = part.select(columns).rename_columns([c.split("__", 1)[-1] for c in columns])
        out[name] = _naive(part)
    return out


def _features_of_partition(fs: FeatureSet, schema: pa.Schema):  # noqa: ANN202
    """The function each executor runs on its partitions: `build_features` on an in-process DuckDB."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from churnml.config import Settings
        from churnml.engine import connect
        from churnml.features.engine import build_features

        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        parts = _partition_tables(batches)
        if parts["rows"].num_rows == 0:
            return
        con = connect(Settings(duckdb_memory_limit="1GB", duckdb_threads=1), spill=False)
        try:
            for name in _TABLES:
                con.register(f"_{name}_arrow", parts[name])
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}_arrow")
                con.unregister(f"_{name}_arrow")
            rows = parts["rows"].to_pandas()
            features = build_features(ContractTables(con), rows[["customer_id", "observation_date"]], fs)
        finally:
            con.close()
        features.insert(0, _ROW_INDEX, rows[_ROW_INDEX].to_numpy())
        yield from pa.Table.from_pandas(features, schema=schema, preserve_index=False).to_batches()

    return run


def _result_schema(fs: FeatureSet) -> pa.Schema:
    categorical = set(fs.categorical_columns)
    return pa.schema(
        [(_ROW_INDEX, pa.int64()), ("customer_id", pa.string()), ("observation_date", pa.timestamp("us")),
         *[(c, pa.string() if c in categorical else pa.float64()) for c in fs.columns]]
    )  # fmt: skip


def build_features_spark(
    spark: SparkSession, tables: ContractTables, rows: pd.DataFrame, fs: FeatureSet, partitions: int = 8
) -> pd.DataFrame:
    """`build_features` of ``rows`` computed on Spark, customer partition by customer partition: the
    same table, in the rows' order, as the DuckDB engine gives."""
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = _result_schema(fs)
    with tempfile.TemporaryDirectory(prefix="churnml-spark-") as folder:
        paths = _export(tables, rows, Path(folder))
        stream = _long_stream(spark, paths, partitions)
        # the stream's timestamps must reach the executors as timestamps without a zone (NTZ)
        result = stream.mapInArrow(_features_of_partition(fs, schema), from_arrow_schema(schema)).toArrow()
    result = result.sort_by(_ROW_INDEX)
    if result.num_rows != len(rows):
        raise RuntimeError(f"features on Spark: {result.num_rows} rows came back for {len(rows)} asked")
    return _naive(result).drop_columns([_ROW_INDEX]).to_pandas()
