"""Validate a dataset against the contract and load the clean tables into DuckDB.

Problems are sorted into two kinds:

* **errors** stop the run before any work: a missing file or column, a column of the wrong type,
  duplicate customer ids, or more bad rows than the spec tolerates;
* **quarantined rows** (an unparseable or future timestamp, an event for an unknown customer, a
  negative MRR, ...) are written to ``<quarantine_dir>/<table>.parquet`` with the reason and counted in
  the report. Nothing is dropped silently.

After a clean run the connection holds tables ``customers``, ``events`` and (if mapped)
``subscriptions`` in contract form.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from churnml.data import DataError, RawTable, register_raw_tables
from churnml.engine import is_numeric_type, quote_ident, quote_literal
from churnml.schema import CONTRACT, EVENT_VOLUME_SQL, KIND_LABELS
from churnml.spec import CustomersSpec, DatasetSpec, EventSourceSpec, TableSpec

__all__ = [
    "Issue",
    "TableSummary",
    "ValidationReport",
    "DataValidationError",
    "validate_dataset",
    "prepare_dataset",
]

Severity = Literal["error", "quarantine", "warning"]
_SQL_TYPES = {"id": "VARCHAR", "string": "VARCHAR", "number": "DOUBLE", "timestamp": "TIMESTAMP"}
EXAMPLES = 3
WRONG_TYPE_SHARE = 0.5  # a column where most values fail to parse is the wrong type, not a few bad rows

# check code -> what was expected (used in messages)
ROW_CHECKS: dict[str, str] = {
    "missing_value": "a value in every row",
    "unparseable": "a value of the contract type",
    "not_finite": "a finite number",
    "future_timestamp": "a timestamp not after the data's as-of time",
    "negative_mrr": "MRR >= 0",
    "end_before_start": "end on or after start",
    "customer_quarantined": "rows of customers whose profile row is valid (its row was quarantined)",
    "unknown_customer": "a customer_id present in the customers table",
    "before_signup": "an event on or after the customer's signup_date",
    "duplicate_event": "each event once (exact duplicates are quarantined)",
}


@dataclass(frozen=True)
class Issue:
    table: str
    column: str | None
    check: str
    severity: Severity
    count: int
    expected: str
    detail: str = ""
    examples: tuple[dict[str, object], ...] = ()

    def message(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        what = self.detail or f"{self.count:,} row(s) fail '{self.check}'"
        text = f"{where}: {what}; expected {self.expected}"
        if self.examples:
            text += "; e.g. " + "; ".join(_format_example(e) for e in self.examples)
        return text


def _format_example(example: dict[str, object]) -> str:
    parts = [f"{k}={v!r}" for k, v in example.items() if k not in ("row", "source")]
    return f"row {example.get('row')} [{', '.join(parts)}]"


@dataclass(frozen=True)
class TableSummary:
    table: str
    rows: int
    clean: int
    quarantined: int
    dropped_event_types: dict[str, int] = field(default_factory=dict)


@dataclass
class ValidationReport:
    issues: list[Issue] = field(default_factory=list)
    tables: dict[str, TableSummary] = field(default_factory=dict)
    quarantine_files: dict[str, Path] = field(default_factory=dict)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def quarantined(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "quarantine"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        lines = []
        for t in self.tables.values():
            line = f"{t.table}: {t.rows:,} rows read, {t.clean:,} clean, {t.quarantined:,} quarantined"
            if t.dropped_event_types:
                dropped = ", ".join(f"{k}={v:,}" for k, v in sorted(t.dropped_event_types.items()))
                line += f", ignored by spec: {dropped}"
            lines.append(line)
        for issue in self.errors:
            lines.append(f"ERROR {issue.message()}")
        for issue in self.quarantined:
            lines.append(f"QUARANTINED {issue.message()}")
        for issue in self.warnings:
            lines.append(f"WARNING {issue.message()}")
        for table, path in self.quarantine_files.items():
            lines.append(f"quarantined {table} rows written to {path}")
        return "\n".join(lines)


class DataValidationError(ValueError):
    """Hard validation errors: the run stops before any work."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__("dataset failed validation:\n" + "\n".join(i.message() for i in report.errors))


# --------------------------------------------------------------------------------------------- typing


def _is_temporal(dtype: str) -> bool:
    return dtype.startswith("TIMESTAMP") or dtype == "DATE"


def _to_utc(expr: str, timezone: str) -> str:
    return expr if timezone == "UTC" else f"timezone('UTC', timezone({quote_literal(timezone)}, {expr}))"


def _typed_expr(kind: str, src: str, dtype: str, table: TableSpec) -> tuple[str, str | None] | str:
    """SQL parsing a source column into its contract type, and the condition marking a bad value.

    Returns an error string if the source type can never hold the contract type.
    """
    col = quote_ident(src)
    if dtype.strip('"') == "NULL":  # an all-empty column (e.g. Parquet null type) fits any contract type
        return ("NULL", None)
    if kind in ("id", "string"):
        if kind == "id" and not (dtype == "VARCHAR" or is_numeric_type(dtype)):
            return f"found {dtype}"
        text = f"CAST({col} AS VARCHAR)"
        return (f"NULLIF(TRIM({text}), '')", None)
    if kind == "number":
        if is_numeric_type(dtype):
            typed = f"CAST({col} AS DOUBLE)"
        elif dtype == "VARCHAR":
            typed = f"TRY_CAST(NULLIF(TRIM({col}), '') AS DOUBLE)"
        else:
            return f"found {dtype}"
        return (typed, f"{col} IS NOT NULL AND {typed} IS NULL")
    # timestamp
    if dtype.startswith("TIMESTAMP WITH TIME ZONE"):
        typed = f"timezone('UTC', {col})"
    elif _is_temporal(dtype):
        typed = _to_utc(f"CAST({col} AS TIMESTAMP)", table.timezone)
    elif dtype == "VARCHAR":
        text = f"NULLIF(TRIM({col}), '')"
        if table.timestamp_format:
            fmt = quote_literal(table.timestamp_format)
            if "%z" in table.timestamp_format or "%Z" in table.timestamp_format:
                typed = f"timezone('UTC', try_strptime({text}, {fmt}))"
            else:
                typed = _to_utc(f"CAST(try_strptime({text}, {fmt}) AS TIMESTAMP)", table.timezone)
        elif table.timezone == "UTC":  # the session zone is UTC: naive text stays, offsets convert
            typed = f"timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ))"
        else:
            # An explicit offset wins; naive text is in the table's zone.
            typed = (
                f"CASE WHEN regexp_matches({text}, '(Z|[+-][0-9]{{2}}:?[0-9]{{2}})$') "
                f"THEN timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)) "
                f"ELSE {_to_utc(f'TRY_CAST({text} AS TIMESTAMP)', table.timezone)} END"
            )
    else:
        return f"found {dtype}"
    return (typed, f"{col} IS NOT NULL AND ({typed}) IS NULL")


@dataclass
class _Mapped:
    """One raw table mapped onto contract columns: SQL pieces for the typed view."""

    raw: RawTable
    selects: dict[str, str] = field(default_factory=dict)  # contract column -> typed SQL
    bad: dict[str, str] = field(default_factory=dict)  # contract column -> bad-value condition
    sources: dict[str, str] = field(default_factory=dict)  # contract column -> source column
    attributes: list[str] = field(default_factory=list)


def _map_table(raw: RawTable, issues: list[Issue]) -> _Mapped:
    contract = CONTRACT[raw.role]
    mapped = _Mapped(raw=raw)
    available = sorted(raw.columns)
    for contract_col, src in raw.spec.columns.items():
        column = contract.column(contract_col)
        if src not in raw.columns:
            issues.append(
                Issue(
                    raw.label,
                    src,
                    "missing_column",
                    "error",
                    1,
                    f"a column {src!r} (mapped to contract column {contract_col!r})",
                    detail=f"column {src!r} is not in the source; it has {available}",
                )  # fmt: skip
            )
            continue
        typed = _typed_expr(column.kind, src, raw.columns[src], raw.spec)
        if isinstance(typed, str):
            issues.append(
                Issue(
                    raw.label,
                    src,
                    "wrong_type",
                    "error",
                    1,
                    KIND_LABELS[column.kind],
                    detail=f"column type is {typed.removeprefix('found ')} (contract column {contract_col!r})",
                )  # fmt: skip
            )
            continue
        mapped.selects[contract_col], cond = typed
        mapped.sources[contract_col] = src
        if cond:
            mapped.bad[contract_col] = cond
    if isinstance(raw.spec, CustomersSpec):
        for attr in raw.spec.attributes:
            if attr not in raw.columns:
                issues.append(
                    Issue(
                        raw.label,
                        attr,
                        "missing_column",
                        "error",
                        1,
                        f"a column {attr!r} (attribute)",
                        detail=f"column {attr!r} is not in the source; it has {available}",
                    )  # fmt: skip
                )
            elif attr in contract.column_names or _is_reserved(attr, contract.column_names):
                contract_column = attr in contract.column_names
                issues.append(
                    Issue(
                        raw.label,
                        attr,
                        "attribute_clash",
                        "error",
                        1,
                        "attributes named unlike contract columns"
                        if contract_column
                        else "attribute names that do not start with '_' and are not 'rowid', 'bad_<column>' "
                        "or 'src_<column>'",
                        detail=f"attribute {attr!r} clashes with the contract column of that name"
                        if contract_column
                        else f"attribute {attr!r} clashes with a column validation uses; rename it in the source",
                    )  # fmt: skip
                )
            else:
                mapped.attributes.append(attr)
    return mapped


def _is_reserved(name: str, contract_cols: Sequence[str]) -> bool:
    """Names of the helper columns validation adds next to a source's own (DuckDB ignores case)."""
    low = name.lower()
    return (
        low.startswith("_")
        or low == "rowid"
        or low in {f"{p}_{c}" for p in ("bad", "src") for c in contract_cols}
    )


def _event_type_sql(spec: EventSourceSpec, mapped: _Mapped) -> str:
    if spec.event_type:
        return quote_literal(spec.event_type)
    base = mapped.selects["event_type"]
    if not spec.event_types:
        return base
    cases = " ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}" for k, v in spec.event_types.items())
    return f"CASE {base} {cases} ELSE {base} END"


def _contract_exprs(role: str, part: _Mapped) -> dict[str, str]:
    """Contract column -> SQL typing it from one source (NULL where the source does not map it)."""
    contract = CONTRACT[role]
    out = {}
    for c in contract.column_names:
        if role == "events" and c == "event_type":
            expr = _event_type_sql(part.raw.spec, part)  # type: ignore[arg-type]
        else:
            expr = part.selects.get(c, "NULL")
        cast = {"number": "DOUBLE", "timestamp": "TIMESTAMP"}.get(contract.column(c).kind, "VARCHAR")
        out[c] = f"CAST({expr} AS {cast})"
    return out


def _row_hash(part: _Mapped) -> str:
    """Identical in every source column = a duplicated row (same contract values alone may be legit,
    e.g. two basket lines at the same price and second)."""
    return "hash(" + ", ".join(quote_ident(c) for c in part.raw.columns) + ")"


def _typed_view(
    con: duckdb.DuckDBPyConnection, role: str, parts: Sequence[_Mapped], rows: str | None = None
) -> str:
    """Create ``typed_<role>``: contract columns, raw text of each mapped column, row and source.

    With ``rows`` (a table of ``_part``, ``_row``), a temporary table ``typed_<role>_rows`` holds only
    those rows: the source is read once more, but typed and hashed for them alone.
    """
    contract = CONTRACT[role]
    selects = []
    for i, part in enumerate(parts):
        cols = ["_row", f"{quote_literal(part.raw.label)} AS _source", f"{_row_hash(part)} AS _row_hash"]
        for c, expr in _contract_exprs(role, part).items():
            cols.append(f"{expr} AS {quote_ident(c)}")
            src = part.sources.get(c)
            # One source keeps the raw column as it is: it is cast to text only for the few bad rows
            # (casting 50M values took a third of a validation). Several sources need one type to union.
            raw = (
                (quote_ident(src) if len(parts) == 1 else f"CAST({quote_ident(src)} AS VARCHAR)")
                if src
                else "NULL::VARCHAR"
            )
            cols.append(f"{raw} AS {quote_ident('src_' + c)}")
        for c in contract.column_names:
            cols.append(
                f"({part.bad[c]}) AS {quote_ident('bad_' + c)}"
                if c in part.bad
                else f"false AS {quote_ident('bad_' + c)}"
            )
        for attr in part.attributes:
            cols.append(quote_ident(attr))
        if role == "events" and isinstance(part.raw.spec, EventSourceSpec) and part.raw.spec.drop_event_types:
            dropped = ", ".join(quote_literal(t) for t in part.raw.spec.drop_event_types)
            cols.append(
                f"(CAST({_event_type_sql(part.raw.spec, part)} AS VARCHAR) IN ({dropped})) AS _dropped"
            )
        else:
            cols.append("false AS _dropped")
        source = part.raw.view
        if rows is not None:
            source = f"(SELECT * FROM {source} WHERE _row IN (SELECT _row FROM {rows} WHERE _part = {i}))"
        selects.append(f"SELECT {', '.join(cols)} FROM {source}")
    view = f"typed_{role}" if rows is None else f"typed_{role}_rows"
    kind = "VIEW" if rows is None else "TABLE"
    con.execute(f"CREATE OR REPLACE TEMP {kind} {view} AS " + " UNION ALL BY NAME ".join(selects))
    return view


@dataclass
class _Staged:
    """A contract table loaded once, unnumbered: row k of part i is rowid ``base + offsets[i] + k - 1``."""

    table: str
    offsets: list[int]
    flags: list[str]  # contract columns with a bad-value flag column ``bad_<c>``
    dropped: bool  # has a ``_dropped`` column (some part drops event types)
    base: int = 0  # rowid of the first row: 0, or DuckDB's offset for rows of an uncommitted transaction

    def row_sql(self, parts: Sequence[_Mapped]) -> str:
        """SQL for ``(_source, _row)`` -> this table's rowid, over a relation holding those two columns."""
        if len(parts) == 1:
            return f"{self.base} + _row - 1"
        cases = " ".join(
            f"WHEN {quote_literal(p.raw.label)} THEN {self.base + off} + _row - 1"
            for p, off in zip(parts, self.offsets, strict=True)
        )
        return f"CASE _source {cases} END"

    @property
    def hash_sql(self) -> str:
        """A row's hash within its source: identical rows of two sources are not duplicates."""
        return "_row_hash" if len(self.offsets) == 1 else "hash(_part, _row_hash)"

    def source_row_sql(self, rowid: str = "rowid") -> str:
        """SQL for a staged row's 1-based row number in its own source (the inverse of `row_sql`)."""
        if len(self.offsets) == 1:
            return f"{rowid} - {self.base} + 1"
        cases = " ".join(
            f"WHEN {i} THEN {rowid} - {self.base + off} + 1" for i, off in enumerate(self.offsets)
        )
        return f"CASE _part {cases} END"


def _stage(con: duckdb.DuckDBPyConnection, role: str, parts: Sequence[_Mapped], flags: list[str]) -> _Staged:
    """Load every part's rows, typed, into one table in source order (parts one after another).

    The table holds the contract columns and attributes first (so it can become the clean table by
    dropping the helper columns), then the part index, the row hash (events) and the bad-value and
    dropped flags the checks need. Reading the unnumbered view keeps the load at one pass.
    """
    table = f"_staged_{role}"
    dropped = role == "events" and any(
        isinstance(p.raw.spec, EventSourceSpec) and p.raw.spec.drop_event_types for p in parts
    )
    offsets, total = [], 0
    con.execute(f"DROP TABLE IF EXISTS {table}")
    for i, part in enumerate(parts):
        cols = [f"{expr} AS {quote_ident(c)}" for c, expr in _contract_exprs(role, part).items()]
        cols += [quote_ident(a) for a in part.attributes]
        cols.append(f"CAST({i} AS USMALLINT) AS _part")
        if role == "events":
            cols.append(f"{_row_hash(part)} AS _row_hash")
        cols += [f"({part.bad[c]}) AS bad_{c}" if c in part.bad else f"false AS bad_{c}" for c in flags]
        if dropped:
            types = part.raw.spec.drop_event_types if isinstance(part.raw.spec, EventSourceSpec) else []
            listed = ", ".join(quote_literal(t) for t in types)
            cols.append(
                f"(CAST({_event_type_sql(part.raw.spec, part)} AS VARCHAR) IN ({listed})) AS _dropped"  # type: ignore[arg-type]
                if types
                else "false AS _dropped"
            )
        select = f"SELECT {', '.join(cols)} FROM {part.raw.rows_view}"
        verb = f"CREATE TABLE {table} AS" if i == 0 else f"INSERT INTO {table} BY NAME"
        try:
            n = con.execute(f"{verb} {select}").fetchall()[0][0]
        except duckdb.Error as err:
            raise _unreadable(part.raw.label, err) from None
        offsets.append(total)
        total += int(n)
    first = con.execute(f"SELECT rowid FROM {table} LIMIT 1").fetchall()  # the first row: insertion order
    base = first[0][0] if first else 0
    return _Staged(table, offsets, flags, dropped, int(base))


def _row_hashes(con: duckdb.DuckDBPyConnection, staged: _Staged) -> np.ndarray:
    """Every staged row's hash (`_Staged.hash_sql`), for `_repeated`."""
    return np.asarray(con.execute(f"SELECT {staged.hash_sql} AS h FROM {staged.table}").fetchnumpy()["h"])


def _repeated(hashes: np.ndarray) -> np.ndarray:
    """Row hashes that occur more than once, found by sorting them (in place) in NumPy.

    A sort of 47M hashes takes ~1 s; a distinct count in SQL (a hash table of 47M keys) took ~8 s.
    Rows with these hashes are duplicate candidates, which the exact search that follows confirms
    (or not, on a hash collision).
    """
    hashes.sort()
    repeats = hashes[1:][hashes[1:] == hashes[:-1]]
    return np.unique(repeats) if len(repeats) else repeats


def _customer_problems(con: duckdb.DuckDBPyConnection, role: str, staged: _Staged, complete: bool) -> int:
    """Customers whose rows some join check would quarantine (unknown, quarantined profile, events
    before signup), found on one row per customer instead of a join of every row.

    They are kept in ``_problem_customers`` with ``_all`` (no clean profile: every row of theirs fails)
    and ``_signup`` (rows before it fail): only those rows need the joined, row-by-row check.
    """
    first = ', min("timestamp") AS _first' if role == "events" else ""
    where = ["s.customer_id IN (SELECT customer_id FROM bad_customers)"]
    if complete:
        where.append("k.customer_id IS NULL")
    if role == "events":
        where.append("s._first < k.signup_date")
    live = "WHERE NOT _dropped" if staged.dropped else ""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _problem_customers AS "
        "SELECT s.customer_id, k.customer_id IS NULL AS _all, k.signup_date AS _signup FROM "
        f"(SELECT customer_id{first} FROM {staged.table} {live} GROUP BY 1) s "
        f"LEFT JOIN customers k ON k.customer_id = s.customer_id WHERE {' OR '.join(where)}"
    )
    return int(con.execute("SELECT count(*) FROM _problem_customers").fetchall()[0][0])


# Rows leave the loaded table by DELETE (no copy) unless more than 1/DELETE_SHARE of them go: deleted
# rows stay in memory and every later scan steps over them.
DELETE_SHARE = 10

JOIN_CHECKS = {"customer_quarantined", "unknown_customer", "before_signup", "duplicate_event"}


def _fetch_examples(
    con: duckdb.DuckDBPyConnection, view: str, where: str, columns: Sequence[str]
) -> tuple[dict[str, object], ...]:
    cols = ", ".join(["_row", "_source"] + [f"CAST({quote_ident('src_' + c)} AS VARCHAR)" for c in columns])
    rows = con.execute(f"SELECT {cols} FROM {view} WHERE {where} ORDER BY _row LIMIT {EXAMPLES}").fetchall()
    return tuple(
        {"row": r[0], "source": r[1], **{c: v for c, v in zip(columns, r[2:], strict=True)}} for r in rows
    )


def _unreadable(label: str, err: duckdb.Error) -> DataError:
    """The error for a source DuckDB fails to read: its label and the first line of DuckDB's message."""
    return DataError(f"{label}: cannot be read: {str(err).strip().splitlines()[0]}")


def _scan(con: duckdb.DuckDBPyConnection, sql: str, label: str) -> list[tuple]:
    try:
        return con.execute(sql).fetchall()
    except duckdb.ConversionException as err:  # pragma: no cover - defensive: typed view uses TRY_CAST
        raise DataError(f"{label}: a value cannot be converted: {err}") from None
    except duckdb.Error as err:
        raise _unreadable(label, err) from None


# ------------------------------------------------------------------------------------------ row checks


def _row_check_cases(
    role: str, contract_cols: Sequence[str], complete_customers: bool, as_of: str
) -> list[tuple[str, str | None, str]]:
    """(check, column, SQL condition) in priority order; the first that matches names the row's issue."""
    contract = CONTRACT[role]
    cases: list[tuple[str, str | None, str]] = []
    for c in contract.columns:
        if c.required:
            cases.append(("missing_value", c.name, f"{quote_ident(c.name)} IS NULL AND NOT bad_{c.name}"))
    for c in contract.columns:
        cases.append(("unparseable", c.name, f"bad_{c.name}"))
        if c.kind == "number":
            cases.append(("not_finite", c.name, f"NOT isfinite({quote_ident(c.name)})"))
        if c.kind == "timestamp" and c.name != "end":  # a scheduled cancellation may lie ahead
            cases.append(("future_timestamp", c.name, f"{quote_ident(c.name)} > TIMESTAMP {as_of}"))
    if "mrr" in contract_cols:
        cases.append(("negative_mrr", "mrr", "mrr < 0"))
    if role == "subscriptions":
        cases.append(("end_before_start", "end", '"end" < "start"'))
    if role in ("events", "subscriptions"):
        cases.append(("customer_quarantined", "customer_id", "_known IS NULL AND _bad_customer IS NOT NULL"))
        if complete_customers:
            cases.append(("unknown_customer", "customer_id", "_known IS NULL"))
    if role == "events":
        cases.append(("before_signup", "timestamp", '"timestamp" < _signup'))
        cases.append(("duplicate_event", None, "_dup > 1"))
    return cases


def _check_table(
    con: duckdb.DuckDBPyConnection,
    role: str,
    parts: Sequence[_Mapped],
    spec: DatasetSpec,
    as_of: dt.datetime,
    quarantine_dir: Path | None,
    report: ValidationReport,
) -> None:
    """Type-check, row-check, quarantine and materialise one contract table.

    The rows are loaded once (`_stage`) and checked in memory. Only when some check can fail (a bad
    value, a problem customer, a repeated row hash) are rows numbered and searched one by one; a clean
    source becomes the contract table by dropping the helper columns.
    """
    label = role if len(parts) > 1 else parts[0].raw.label
    contract = CONTRACT[role]
    typed = _typed_view(con, role, parts)  # numbered: read only to report rows
    mapped_cols = sorted({c for p in parts for c in p.selects})
    bad_cols = [c for c in contract.column_names if any(c in p.bad for p in parts)]
    staged = _stage(con, role, parts, bad_cols)
    # events: the row hashes are sorted on one core while DuckDB runs the checks (`_check_staged` waits
    # for them when it needs them)
    sorter = ThreadPoolExecutor(max_workers=1)
    repeated = sorter.submit(_repeated, _row_hashes(con, staged)) if role == "events" else None
    try:
        _check_staged(
            con, role, parts, spec, as_of, quarantine_dir, report, label, typed, mapped_cols, staged, repeated
        )
    finally:
        sorter.shutdown(wait=True)
        con.execute(f"DROP VIEW IF EXISTS {staged.table}_v")
        for table in (
            staged.table,
            f"typed_{role}_rows",
            "_candidate_rows",
            "_problem_customers",
            "_repeated_hashes",
        ):
            con.execute(f"DROP TABLE IF EXISTS {table}")


def _check_staged(
    con: duckdb.DuckDBPyConnection,
    role: str,
    parts: Sequence[_Mapped],
    spec: DatasetSpec,
    as_of: dt.datetime,
    quarantine_dir: Path | None,
    report: ValidationReport,
    label: str,
    typed: str,
    mapped_cols: list[str],
    staged: _Staged,
    repeated_job: Future[np.ndarray] | None,
) -> None:
    contract = CONTRACT[role]
    bad_cols = staged.flags
    complete = spec.customers is not None and spec.customers.complete
    cases = _row_check_cases(role, mapped_cols, complete, quote_literal(as_of.isoformat(sep=" ")))
    # checks that need only the row itself, over the staged columns (flags of clean columns are false)
    flags = ", ".join(f"false AS bad_{c}" for c in contract.column_names if c not in bad_cols)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {staged.table}_v AS SELECT *, rowid AS _rid{', ' + flags if flags else ''}"
        f"{'' if staged.dropped else ', false AS _dropped'} FROM {staged.table}"
    )
    local = " OR ".join(f"({cond})" for check, _, cond in cases if check not in JOIN_CHECKS) or "false"

    # 1. column-level: most values unparseable -> the column has the wrong type (hard error)
    # count_if, not count(*) FILTER: one pass over the flags instead of a selection per filter (0.8 s
    # against 1.4 s on 47M events); it gives NULL on no rows, hence the coalesce
    def count_if(cond: str) -> str:
        return f"coalesce(count_if({cond}), 0)"

    aggs = ["count(*)", count_if("_dropped")]
    for c in bad_cols:  # a present value either parses or is flagged
        aggs += [count_if(f"bad_{c}"), f"count({quote_ident(c)}) + {count_if(f'bad_{c}')}"]
    aggs.append(count_if(f"NOT _dropped AND ({local})"))
    totals = _scan(con, f"SELECT {', '.join(aggs)} FROM {staged.table}_v", label)[0]
    rows, dropped, local_bad = totals[0], totals[1], totals[-1]
    dropped_types: dict[str, int] = {}
    if dropped:
        dropped_types = dict(
            _scan(con, f"SELECT event_type, count(*) FROM {staged.table} WHERE _dropped GROUP BY 1", label)
        )
    hard = False
    for i, c in enumerate(bad_cols):
        n_bad, n_present = totals[2 + 2 * i], totals[3 + 2 * i]
        if n_bad and n_bad >= WRONG_TYPE_SHARE * n_present:
            hard = True
            kind = contract.column(c).kind
            fmt = next((p.raw.spec.timestamp_format for p in parts if p.raw.spec.timestamp_format), None)
            expected = KIND_LABELS[kind] + (f" in format {fmt!r}" if kind == "timestamp" and fmt else "")
            report.issues.append(
                Issue(
                    label,
                    next(p.sources[c] for p in parts if c in p.sources),
                    "wrong_type",
                    "error",
                    n_bad,
                    expected,
                    detail=f"{n_bad:,} of {n_present:,} values cannot be read (contract column {c!r})",
                    examples=_fetch_examples(con, typed, f"bad_{c}", [c]),
                )  # fmt: skip
            )
    if hard:
        return

    # 2. duplicate customer ids are ambiguous profiles: stop.
    if role == "customers":
        dupes = _scan(
            con,
            f"SELECT count(*), sum(n), list(customer_id ORDER BY customer_id)[1:{EXAMPLES}] FROM "
            f"(SELECT customer_id, count(*) AS n FROM {staged.table} WHERE customer_id IS NOT NULL "
            f"GROUP BY 1 HAVING count(*) > 1)",
            label,
        )[0]
        if dupes[0]:
            ids = ", ".join(repr(i) for i in dupes[2])
            report.issues.append(
                Issue(
                    label,
                    parts[0].sources["customer_id"],
                    "duplicate_id",
                    "error",
                    int(dupes[1]),
                    "each customer_id once",
                    detail=f"{dupes[0]:,} customer_id value(s) appear more than once ({int(dupes[1]):,} rows), e.g. {ids}",
                )  # fmt: skip
            )
            return

    # 3. row checks -> the first failing check names the row's issue. Candidate rows (a local check
    # fails, a problem customer, a repeated row hash) are found on the staged table; only they are
    # numbered in their source and checked one by one with the joins. Bad rows are few (bounded by
    # max_quarantine_fraction), so they are collected once into a small table that counts, examples,
    # the quarantine file and the clean table all read.
    joined_checks = role in ("events", "subscriptions") and spec.customers is not None
    repeated = repeated_job.result() if repeated_job is not None else np.empty(0, np.uint64)
    problems = joined_checks and _customer_problems(con, role, staged, complete) > 0
    duplicates = len(repeated) > 0
    search = bool(local_bad) or duplicates or problems
    rows_view = typed
    if search:
        candidate, problem_join = [f"({local})"], ""
        if problems:
            problem_join = (
                "LEFT JOIN (SELECT customer_id AS _pid, _all, _signup FROM _problem_customers) p "
                "ON customer_id = p._pid"
            )
            candidate.append("p._all" + (' OR "timestamp" < p._signup' if role == "events" else ""))
        if duplicates:
            con.register("_repeated_df", pd.DataFrame({"h": repeated}))
            con.execute("CREATE OR REPLACE TEMP TABLE _repeated_hashes AS SELECT h FROM _repeated_df")
            con.unregister("_repeated_df")
            candidate.append(f"{staged.hash_sql} IN (SELECT h FROM _repeated_hashes)")
        try:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _candidate_rows AS SELECT _part, {staged.source_row_sql('_rid')} AS _row "
                f"FROM {staged.table}_v {problem_join} WHERE NOT _dropped AND ({' OR '.join(candidate)})"
            )
            rows_view = _typed_view(con, role, parts, rows="_candidate_rows")
        except duckdb.Error as err:  # the source is read again here: it may have changed or broken
            raise _unreadable(label, err) from None
    joins, extra = "", []
    if joined_checks:
        joins = (
            "LEFT JOIN (SELECT customer_id AS _cid, signup_date AS _signup FROM customers) k ON t.customer_id = k._cid "
            "LEFT JOIN (SELECT DISTINCT customer_id AS _qid FROM bad_customers) q ON t.customer_id = q._qid"
        )
        extra = ["k._cid AS _known", "k._signup AS _signup", "q._qid AS _bad_customer"]
    else:
        extra = ["NULL::VARCHAR AS _known", "NULL::TIMESTAMP AS _signup", "NULL::VARCHAR AS _bad_customer"]
    if role == "events":
        # exact duplicates among the candidates (every row of a repeated hash is one): all but the
        # first of a source's identical rows are flagged
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE dup_events AS SELECT _source AS _dsource, _row_hash AS _dhash, "
            f"min(_row) AS _first FROM {rows_view} {'' if duplicates else 'WHERE false'} "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        )
        joins += " LEFT JOIN dup_events dp ON t._source = dp._dsource AND t._row_hash = dp._dhash"
        extra.append("CASE WHEN dp._first IS NOT NULL AND t._row > dp._first THEN 2 ELSE 1 END AS _dup")
    case_sql = " ".join(
        f"WHEN {cond} THEN {quote_literal(check + ':' + (col or ''))}" for check, col, cond in cases
    )
    bad = f"bad_{role}"
    src_cols = ", ".join(
        f"CAST({quote_ident('src_' + c)} AS VARCHAR) AS {quote_ident('src_' + c)}" for c in mapped_cols
    )
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {bad} AS SELECT _row, _source, customer_id, _issue, {src_cols} FROM "
            f"(SELECT *, CASE {case_sql} END AS _issue FROM "
            f"(SELECT t.*, {', '.join(extra)} FROM {rows_view} t {joins} WHERE NOT t._dropped{'' if search else ' AND false'})) "
            "WHERE _issue IS NOT NULL"
        )
    except duckdb.Error as err:
        raise _unreadable(label, err) from None
    # per source and check, so a message names the file and column the bad rows came from
    counts = _scan(con, f"SELECT _source, _issue, count(*) FROM {bad} GROUP BY 1, 2 ORDER BY 1, 2", label)
    quarantined = sum(n for *_, n in counts)
    for source, issue_code, n in counts:
        check, col = issue_code.split(":", 1)
        column = col or None
        part = next(p for p in parts if p.raw.label == source)
        src_col = part.sources.get(column, column) if column else None
        where = f"_issue = {quote_literal(issue_code)} AND _source = {quote_literal(source)}"
        report.issues.append(
            Issue(
                source,
                src_col,
                check,
                "quarantine",
                n,
                ROW_CHECKS[check],
                detail=f"{n:,} row(s) quarantined ({check.replace('_', ' ')})",
                examples=_fetch_examples(con, bad, where, mapped_cols),
            )  # fmt: skip
        )
    kept = rows - dropped
    limit = spec.validation.max_quarantine_fraction
    if kept and quarantined / kept > limit:
        report.issues.append(
            Issue(
                label,
                None,
                "too_many_bad_rows",
                "error",
                quarantined,
                f"at most {limit:.1%} bad rows (validation.max_quarantine_fraction)",
                detail=f"{quarantined:,} of {kept:,} rows ({quarantined / kept:.1%}) are bad",
            )  # fmt: skip
        )
        return

    if quarantined and quarantine_dir is not None:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        path = quarantine_dir / f"{role}.parquet"
        raw_cols = ", ".join(f"{quote_ident('src_' + c)} AS {quote_ident(c)}" for c in mapped_cols)
        con.execute(
            f"COPY (SELECT _row AS source_row, _source AS source, split_part(_issue, ':', 1) AS issue, "
            f"NULLIF(split_part(_issue, ':', 2), '') AS issue_column, {raw_cols} FROM {bad} "
            f"ORDER BY _source, _row) TO {quote_literal(str(path))} (FORMAT parquet)"
        )
        report.quarantine_files[role] = path

    helpers = ["_part", *(["_row_hash"] if role == "events" else []), *(f"bad_{c}" for c in bad_cols)]
    if staged.dropped:
        helpers.append("_dropped")
    gone = quarantined + dropped
    try:
        if gone * DELETE_SHARE > rows:  # many rows go (dropped event types): copy the rest
            keep = [f"t.{quote_ident(c)}" for c in contract.column_names]
            keep += [f"t.{quote_ident(a)}" for p in parts for a in p.attributes]
            anti = (
                f" ANTI JOIN (SELECT {staged.row_sql(parts)} AS _rid FROM {bad}) b ON t.rowid = b._rid"
                if quarantined
                else ""
            )
            live = " WHERE NOT t._dropped" if staged.dropped else ""
            con.execute(
                f"CREATE OR REPLACE TABLE {role} AS SELECT {', '.join(keep)} FROM {staged.table} t{anti}{live}"
            )
        else:  # the staged table becomes the contract table, no copy: delete the few rows that go
            if gone:
                where = ["_dropped"] if dropped else []
                if quarantined:
                    where.append(f"rowid IN (SELECT {staged.row_sql(parts)} FROM {bad})")
                con.execute(f"DELETE FROM {staged.table} WHERE {' OR '.join(where)}")
            for col in helpers:
                con.execute(f"ALTER TABLE {staged.table} DROP COLUMN {quote_ident(col)}")
            con.execute(f"DROP TABLE IF EXISTS {role}")
            con.execute(f"ALTER TABLE {staged.table} RENAME TO {role}")
    except duckdb.Error as err:
        raise _unreadable(label, err) from None
    report.tables[role] = TableSummary(role, rows, rows - dropped - quarantined, quarantined, dropped_types)


def _complete_customers(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    """Customers = profile rows plus every id seen in events/subscriptions (for partial or absent profiles)."""
    ids = "SELECT DISTINCT customer_id FROM events"
    if spec.subscriptions:
        ids += " UNION SELECT DISTINCT customer_id FROM subscriptions"
    if spec.customers is None:
        cols = ", ".join(
            "customer_id"
            if c.name == "customer_id"
            else f"NULL::{_SQL_TYPES[c.kind]} AS {quote_ident(c.name)}"
            for c in CONTRACT["customers"].columns
        )
        con.execute(f"CREATE OR REPLACE TABLE customers AS SELECT {cols} FROM ({ids}) ORDER BY customer_id")
    else:
        con.execute(
            f"INSERT INTO customers BY NAME SELECT customer_id FROM ({ids}) "
            f"WHERE customer_id NOT IN (SELECT customer_id FROM customers)"
        )


def validate_dataset(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    quarantine_dir: Path | None = None,
    as_of: dt.datetime | None = None,
) -> ValidationReport:
    """Check every mapped table; on success leave clean contract tables in ``con``.

    Never raises for bad data (only for unreadable sources, as DataError): the report says what is wrong.
    """
    report = ValidationReport()
    as_of = as_of or spec.validation.as_of or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    con.execute("DROP TABLE IF EXISTS event_volume")  # describes the events loaded below; rebuilt at the end
    raw_tables = register_raw_tables(con, spec)
    mapped: dict[str, list[_Mapped]] = {}
    for raw in raw_tables:
        mapped.setdefault(raw.role, []).append(_map_table(raw, report.issues))
    if report.errors:  # missing columns or impossible types: nothing else can be trusted
        return report
    for role in ("customers", "subscriptions", "events"):
        if role in mapped:
            _check_table(con, role, mapped[role], spec, as_of, quarantine_dir, report)
            if report.errors:
                return report
    if spec.customers is None or not spec.customers.complete:
        _complete_customers(con, spec)
    if spec.customers is None:
        n = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]  # type: ignore[index]
        report.tables["customers"] = TableSummary("customers", 0, n, 0)
    if not spec.subscriptions:
        cols = ", ".join(
            f"{quote_ident(c.name)} {_SQL_TYPES[c.kind]}" for c in CONTRACT["subscriptions"].columns
        )
        con.execute(f"CREATE OR REPLACE TABLE subscriptions ({cols})")
    report.issues.extend(_volume_spikes(con))
    events = report.tables.get("events")
    if events is not None and events.clean == 0:  # valid, but every event feature would be empty
        gone = f"{events.rows:,} row(s) read, {events.quarantined:,} quarantined"
        if events.dropped_event_types:
            gone += f", {sum(events.dropped_event_types.values()):,} of dropped types"
        report.issues.append(
            Issue("events", None, "no_events", "warning", 0, "at least one event (check the source path, "
                  "its filters and drop_event_types)", detail=f"no events to build features from ({gone})")
        )  # fmt: skip
    return report


SPIKE_RATIO = 10.0  # a day with this many times the typical daily volume is flagged
SPIKE_MIN_EVENTS = 100  # ...if it has at least this many events (tiny data is always spiky)


def _volume_spikes(con: duckdb.DuckDBPyConnection) -> list[Issue]:
    """Days whose event volume is far above the typical day: kept (they may be real) but reported.

    A 10x day is usually a duplicated export or a replayed pipeline; the CSM would otherwise see a
    usage surge that never happened. The daily volumes stay in the small table ``event_volume``
    (`churnml.schema.EVENT_VOLUME_SQL`: per day and type, events, how many carry a value and
    how those values look), so reading which types exist and what their values mean
    (`churnml.features.infer_feature_set`) does not scan the events again.
    """
    con.execute(f"CREATE OR REPLACE TABLE event_volume AS {EVENT_VOLUME_SQL} ORDER BY ALL")
    rows = con.execute(
        f"""
        WITH typical AS (SELECT event_type, median(events) AS med FROM event_volume GROUP BY ALL)
        SELECT d.day, d.event_type, d.events, t.med FROM event_volume d JOIN typical t USING (event_type)
        WHERE d.events >= {SPIKE_MIN_EVENTS} AND d.events > {SPIKE_RATIO} * t.med
        ORDER BY d.events / t.med DESC
        """
    ).fetchall()
    if not rows:
        return []
    examples = tuple({"row": str(day), "event_type": t, "events": int(n), "typical": float(med)}
                     for day, t, n, med in rows[:3])  # fmt: skip
    return [Issue("events", "timestamp", "volume_spike", "warning", len(rows),
                  f"daily volume within {SPIKE_RATIO:.0f}x the typical day of its event type",
                  f"{len(rows)} day(s) with more than {SPIKE_RATIO:.0f}x the typical daily events (kept, check the source "
                  "for duplicated exports)", examples)]  # fmt: skip


def prepare_dataset(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    quarantine_dir: Path | None = None,
    as_of: dt.datetime | None = None,
) -> ValidationReport:
    """Validate and load; raise DataValidationError on hard errors (the run stops before any work)."""
    report = validate_dataset(con, spec, quarantine_dir=quarantine_dir, as_of=as_of)
    if not report.ok:
        raise DataValidationError(report)
    return report
