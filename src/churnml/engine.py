"""The embedded DuckDB engine: one place that sets memory, threads, spill folder and time zone."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pandas as pd

from churnml.config import Settings

__all__ = ["NUMERIC_TYPES", "connect", "is_numeric_type", "quote_ident", "quote_literal", "write_tables"]

# DuckDB's number types (DECIMAL(p, s) besides): what validation reads as a number, and attributes as one
NUMERIC_TYPES = frozenset({
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
    "UHUGEINT", "FLOAT", "DOUBLE", "REAL",
})  # fmt: skip


def is_numeric_type(dtype: str) -> bool:
    """Whether a DuckDB column type holds numbers."""
    return dtype in NUMERIC_TYPES or dtype.startswith("DECIMAL")


def connect(
    settings: Settings | None = None, database: str = ":memory:", spill: bool = True
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection bounded in memory, working in UTC.

    With ``spill`` (batch work) it spills to ``settings.temp_dir`` beyond the limit; without (small
    online requests) it touches no disk.
    """
    settings = settings or Settings.from_env()
    con = duckdb.connect(database)
    con.execute(f"SET memory_limit = {quote_literal(settings.duckdb_memory_limit)}")
    con.execute(f"SET threads = {int(settings.duckdb_threads)}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # the CLI draws its own; DuckDB's would garble logs
    # DuckDB's default, set here because validation depends on it: a loaded row's position is its
    # row number in the source, which quarantine reports and the clean table's deletions rely on
    con.execute("SET preserve_insertion_order = true")
    if spill:
        settings.temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = {quote_literal(str(settings.temp_dir))}")
    else:
        con.execute("SET temp_directory = ''")
    return con


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def write_tables(path: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write data frames as the tables of a new DuckDB file that replaces ``path`` at once (a temp file,
    then os.replace): readers, such as the pages, never see half a file, and a failure leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with duckdb.connect(str(tmp)) as con:
            for name, frame in tables.items():
                con.register("_frame", frame)
                con.execute(f"CREATE TABLE {quote_ident(name)} AS SELECT * FROM _frame")
                con.unregister("_frame")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
