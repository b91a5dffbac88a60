"""Map a raw source onto the contract: which source column feeds which contract column, typed how.

Each mapped column becomes a typed SQL expression (parsing text, converting time zones to UTC) and a
condition that flags a value present but unreadable, so a bad value is reported rather than guessed.
Missing columns, impossible types and attribute names that clash with the contract or with the
helper columns validation adds are errors before any row is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from churnml.data.report import Issue
from churnml.data.sources import RawTable
from churnml.engine import is_numeric_type, quote_ident, quote_literal
from churnml.schema import CONTRACT, KIND_LABELS
from churnml.spec import CustomersSpec, EventSourceSpec, TableSpec

__all__ = [
    "SQL_TYPES",
    "Mapped",
    "map_table",
    "contract_exprs",
    "event_type_sql",
    "row_hash_sql",
    "typed_view",
]

SQL_TYPES = {"id": "VARCHAR", "string": "VARCHAR", "number": "DOUBLE", "timestamp": "TIMESTAMP"}


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
class Mapped:
    """One raw table mapped onto contract columns: SQL pieces for the typed view."""

    raw: RawTable
    selects: dict[str, str] = field(default_factory=dict)  # contract column -> typed SQL
    bad: dict[str, str] = field(default_factory=dict)  # contract column -> bad-value condition
    sources: dict[str, str] = field(default_factory=dict)  # contract column -> source column
    attributes: list[str] = field(default_factory=list)


def map_table(raw: RawTable, issues: list[Issue]) -> Mapped:
    """The contract columns and attributes ``raw`` maps, typed; what cannot be mapped goes to ``issues``."""
    mapped = Mapped(raw=raw)
    for contract_col, src in raw.spec.columns.items():
        typed = _map_column(raw, contract_col, src, issues)
        if typed is not None:
            mapped.selects[contract_col], cond = typed
            mapped.sources[contract_col] = src
            if cond:
                mapped.bad[contract_col] = cond
    if isinstance(raw.spec, CustomersSpec):
        mapped.attributes = [a for a in raw.spec.attributes if _attribute_ok(raw, a, issues)]
    return mapped


def _map_column(
    raw: RawTable, contract_col: str, src: str, issues: list[Issue]
) -> tuple[str, str | None] | None:
    """(typed SQL, bad-value condition) of one mapped column, or None after reporting why not."""
    column = CONTRACT[raw.role].column(contract_col)
    if src not in raw.columns:
        issues.append(Issue(raw.label, src, "missing_column", "error", 1,
                            f"a column {src!r} (mapped to contract column {contract_col!r})",
                            detail=f"column {src!r} is not in the source; it has {sorted(raw.columns)}"))  # fmt: skip
        return None
    typed = _typed_expr(column.kind, src, raw.columns[src], raw.spec)
    if isinstance(typed, str):
        issues.append(Issue(raw.label, src, "wrong_type", "error", 1, KIND_LABELS[column.kind],
                            detail=f"column type is {typed.removeprefix('found ')} (contract column {contract_col!r})"))  # fmt: skip
        return None
    return typed


def _attribute_ok(raw: RawTable, attr: str, issues: list[Issue]) -> bool:
    """Whether a customer attribute can be kept as it is; if not, the issue says why."""
    names = CONTRACT[raw.role].column_names
    if attr not in raw.columns:
        issues.append(Issue(raw.label, attr, "missing_column", "error", 1, f"a column {attr!r} (attribute)",
                            detail=f"column {attr!r} is not in the source; it has {sorted(raw.columns)}"))  # fmt: skip
        return False
    if attr in names:
        issues.append(Issue(raw.label, attr, "attribute_clash", "error", 1, "attributes named unlike contract columns",
                            detail=f"attribute {attr!r} clashes with the contract column of that name"))  # fmt: skip
        return False
    if _is_reserved(attr, names):
        issues.append(Issue(raw.label, attr, "attribute_clash", "error", 1,
                            "attribute names that do not start with '_' and are not 'rowid', 'bad_<column>' or 'src_<column>'",
                            detail=f"attribute {attr!r} clashes with a column validation uses; rename it in the source"))  # fmt: skip
        return False
    return True


def _is_reserved(name: str, contract_cols: Sequence[str]) -> bool:
    """Names of the helper columns validation adds next to a source's own (DuckDB ignores case)."""
    low = name.lower()
    return (
        low.startswith("_")
        or low == "rowid"
        or low in {f"{p}_{c}" for p in ("bad", "src") for c in contract_cols}
    )


def event_type_sql(spec: EventSourceSpec, mapped: Mapped) -> str:
    if spec.event_type:
        return quote_literal(spec.event_type)
    base = mapped.selects["event_type"]
    if not spec.event_types:
        return base
    cases = " ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}" for k, v in spec.event_types.items())
    return f"CASE {base} {cases} ELSE {base} END"


def contract_exprs(role: str, part: Mapped) -> dict[str, str]:
    """Contract column -> SQL typing it from one source (NULL where the source does not map it)."""
    contract = CONTRACT[role]
    out = {}
    for c in contract.column_names:
        if role == "events" and c == "event_type":
            expr = event_type_sql(part.raw.spec, part)  # type: ignore[arg-type]
        else:
            expr = part.selects.get(c, "NULL")
        cast = {"number": "DOUBLE", "timestamp": "TIMESTAMP"}.get(contract.column(c).kind, "VARCHAR")
        out[c] = f"CAST({expr} AS {cast})"
    return out


def row_hash_sql(part: Mapped) -> str:
    """Identical in every source column = a duplicated row (same contract values alone may be legit,
    e.g. two basket lines at the same price and second)."""
    return "hash(" + ", ".join(quote_ident(c) for c in part.raw.columns) + ")"


def typed_view(
    con: duckdb.DuckDBPyConnection, role: str, parts: Sequence[Mapped], rows: str | None = None
) -> str:
    """Create ``typed_<role>``: contract columns, raw text of each mapped column, row and source.

    With ``rows`` (a table of ``_part``, ``_row``), a temporary table ``typed_<role>_rows`` holds only
    those rows: the source is read once more, but typed and hashed for them alone.
    """
    contract = CONTRACT[role]
    selects = []
    for i, part in enumerate(parts):
        cols = ["_row", f"{quote_literal(part.raw.label)} AS _source", f"{row_hash_sql(part)} AS _row_hash"]
        for c, expr in contract_exprs(role, part).items():
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
                f"(CAST({event_type_sql(part.raw.spec, part)} AS VARCHAR) IN ({dropped})) AS _dropped"
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
