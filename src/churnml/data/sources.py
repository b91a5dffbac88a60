"""Open a dataset's sources in DuckDB as raw views, without reading the data yet.

Each role a spec maps (customers, each events source, subscriptions) becomes a view ``raw_<role>``
over the file or table, with a ``_row`` number so problems can be reported by row, and a view
``raw_<role>_rows`` of the same rows in the same order without the number: numbering is a window
over the whole source, which doubles the cost of loading it, so the bulk load reads that view and
row numbers are only computed when a row must be reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from churnml.engine import quote_ident, quote_literal
from churnml.spec import DatasetSpec, EventSourceSpec, LookupSpec, TableSpec

__all__ = ["DataError", "RawTable", "register_raw_tables", "CSV_SUFFIXES", "PARQUET_SUFFIXES"]

PARQUET_SUFFIXES = {".parquet", ".pq"}
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}


class DataError(ValueError):
    """A source cannot be read at all (missing, truncated, wrong encoding, unknown format)."""


@dataclass(frozen=True)
class RawTable:
    role: str  # customers | events | subscriptions
    label: str  # how messages name it: "events[0] (transactions.parquet)"
    view: str  # numbered (a ``_row`` column, 1-based, in source order)
    rows_view: str  # the same rows in the same order, unnumbered
    spec: TableSpec
    columns: dict[str, str]  # source column -> DuckDB type


def _reader_sql(spec: DatasetSpec, table: TableSpec | LookupSpec, label: str) -> str:
    if spec.source.kind == "duckdb":
        return f"SELECT * FROM src.{quote_ident(table.table or '')}"
    path = spec.source_path / (table.file or "")
    if not any(ch in str(table.file) for ch in "*?[") and not path.is_file():
        raise DataError(f"{label}: file {path} does not exist")
    suffix = Path(table.file or "").suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return f"SELECT * FROM read_parquet({quote_literal(str(path))})"
    if suffix in CSV_SUFFIXES:
        delim = "\t" if suffix == ".tsv" else table.csv_delimiter
        # Everything as text: churnml parses types itself so a bad value is reported, not guessed.
        return (
            f"SELECT * FROM read_csv({quote_literal(str(path))}, header = true, all_varchar = true, "
            f"delim = {quote_literal(delim)}, strict_mode = true)"
        )
    raise DataError(f"{label}: cannot read {path.name}; expected a Parquet (.parquet) or CSV (.csv) file")


def _grouped_reader(reader: str, table: EventSourceSpec) -> str:
    """One row per event: group the source rows by the spec's keys (first timestamp, summed value)."""
    keys = [table.columns["customer_id"], *table.group_by]
    aggs = []
    for contract_col, src in table.columns.items():
        if src in keys:
            continue
        # other columns: the smallest, not any_value, so every read of the source gives the same event
        # (validation reads it again to report bad rows, and a report must show what was loaded)
        fn = {"timestamp": "min", "value": "sum"}.get(contract_col, "min")
        aggs.append(f"{fn}({quote_ident(src)}) AS {quote_ident(src)}")
    key_sql = ", ".join(quote_ident(k) for k in keys)
    return f"SELECT {key_sql}, {', '.join(aggs)} FROM ({reader}) GROUP BY {key_sql} ORDER BY {key_sql}"


def _joined_reader(
    con: duckdb.DuckDBPyConnection, spec: DatasetSpec, reader: str, lookup: LookupSpec, label: str
) -> str:
    """Source rows, numbered as in the source, with the lookup table's columns joined by key.

    A left join: a row whose key is not in the lookup keeps NULLs (validation then reports it); the
    lookup's keys must be unique, or one event would become several.
    """
    lk_label = f"{label} lookup ({lookup.location})"
    lk_reader = _reader_sql(spec, lookup, lk_label)
    columns = {}
    for what, sql in ((label, reader), (lk_label, lk_reader)):
        try:
            columns[what] = [r[0] for r in con.execute(f"DESCRIBE {sql}").fetchall()]
        except duckdb.Error as err:
            raise DataError(f"{what}: cannot be read: {_first_line(err)}") from None
    for what, cols in columns.items():
        missing = [k for k in lookup.keys if k not in cols]
        if missing:
            raise DataError(f"{what}: lookup key column(s) {missing} missing; it has {cols}")
    clash = sorted((set(columns[label]) & set(columns[lk_label])) - set(lookup.keys))
    if clash:
        raise DataError(
            f"{lk_label}: column(s) {clash} are in both tables; only the key column(s) {lookup.keys} may be"
        )
    keys = ", ".join(quote_ident(k) for k in lookup.keys)
    try:
        dupes = con.execute(
            f"SELECT count(*), any_value(({keys})::VARCHAR) FROM (SELECT {keys} FROM ({lk_reader}) "
            f"GROUP BY ALL HAVING count(*) > 1)"
        ).fetchall()[0]
    except duckdb.Error as err:
        raise DataError(f"{lk_label}: cannot be read: {_first_line(err)}") from None
    if dupes[0]:
        raise DataError(
            f"{lk_label}: {dupes[0]:,} key value(s) of {lookup.keys} appear more than once (e.g. {dupes[1]}); "
            "expected each key once"
        )
    return (
        f"SELECT s.* EXCLUDE (_src_row), l.* EXCLUDE ({keys}), s._src_row AS _row "
        f"FROM (SELECT *, row_number() OVER () AS _src_row FROM ({reader})) s LEFT JOIN ({lk_reader}) l USING ({keys})"
    )


def _attach(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    if spec.source.kind != "duckdb":
        return
    attached = {row[0] for row in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
    if "src" in attached:
        return
    if not spec.source_path.is_file():
        raise DataError(f"source: DuckDB database {spec.source_path} does not exist")
    try:
        con.execute(f"ATTACH {quote_literal(str(spec.source_path))} AS src (READ_ONLY)")
    except duckdb.Error as err:
        raise DataError(f"source: cannot open DuckDB database {spec.source_path}: {err}") from None


def register_raw_tables(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> list[RawTable]:
    """Create ``raw_*`` views for every mapped table; raises DataError if one cannot be opened."""
    _attach(con, spec)
    roles: list[tuple[str, str, TableSpec]] = []
    if spec.customers:
        roles.append(("customers", "raw_customers", spec.customers))
    for i, source in enumerate(spec.events):
        roles.append(("events", f"raw_events_{i}", source))
    if spec.subscriptions:
        roles.append(("subscriptions", "raw_subscriptions", spec.subscriptions))

    tables = []
    for role, view, table in roles:
        label = f"{role}[{view.rsplit('_', 1)[-1]}]" if role == "events" else role
        label = f"{label} ({table.location})"
        reader = _reader_sql(spec, table, label)
        if isinstance(table, EventSourceSpec) and table.group_by:
            reader = _grouped_reader(reader, table)
        numbered = f"SELECT *, row_number() OVER () AS _row FROM ({reader})"
        rows = reader
        if isinstance(table, EventSourceSpec) and table.lookup:
            numbered = _joined_reader(con, spec, reader, table.lookup, label)
            rows = f"SELECT * EXCLUDE (_row) FROM {view} ORDER BY _row"  # a join need not keep the order
        try:
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {numbered}")
            con.execute(f"CREATE OR REPLACE VIEW {view}_rows AS {rows}")
            described = con.execute(f"DESCRIBE {view}").fetchall()
        except duckdb.Error as err:
            raise DataError(f"{label}: cannot be read: {_first_line(err)}") from None
        columns = {name: dtype for name, dtype, *_ in described if name != "_row"}
        tables.append(
            RawTable(role=role, label=label, view=view, rows_view=f"{view}_rows", spec=table, columns=columns)
        )
    return tables


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
