"""Stage a contract table: every source's rows loaded once, typed, with the flags the checks read.

The staged table becomes the clean contract table by dropping its helper columns (and deleting the few
rows that fail), so a clean source is read once. `TableCheck` is what the checks of one table share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from churnml.data.mapping import Mapped, contract_exprs, event_type_sql, row_hash_sql
from churnml.data.report import ValidationReport
from churnml.data.sources import DataError
from churnml.engine import quote_ident, quote_literal
from churnml.schema import CONTRACT, TableContract
from churnml.spec import DatasetSpec, EventSourceSpec

__all__ = ["Staged", "TableCheck", "stage", "unreadable"]


def unreadable(label: str, err: duckdb.Error) -> DataError:
    """The error for a source DuckDB fails to read: its label and the first line of DuckDB's message."""
    return DataError(f"{label}: cannot be read: {str(err).strip().splitlines()[0]}")


@dataclass
class Staged:
    """A contract table loaded once, unnumbered: row k of part i is rowid ``base + offsets[i] + k - 1``."""

    table: str
    offsets: list[int]
    flags: list[str]  # contract columns with a bad-value flag column ``bad_<c>``
    dropped: bool  # has a ``_dropped`` column (some part drops event types)
    base: int = 0  # rowid of the first row: 0, or DuckDB's offset for rows of an uncommitted transaction

    def row_sql(self, parts: Sequence[Mapped]) -> str:
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


def stage(con: duckdb.DuckDBPyConnection, role: str, parts: Sequence[Mapped], flags: list[str]) -> Staged:
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
        cols = [f"{expr} AS {quote_ident(c)}" for c, expr in contract_exprs(role, part).items()]
        cols += [quote_ident(a) for a in part.attributes]
        cols.append(f"CAST({i} AS USMALLINT) AS _part")
        if role == "events":
            cols.append(f"{row_hash_sql(part)} AS _row_hash")
        cols += [f"({part.bad[c]}) AS bad_{c}" if c in part.bad else f"false AS bad_{c}" for c in flags]
        if dropped:
            types = part.raw.spec.drop_event_types if isinstance(part.raw.spec, EventSourceSpec) else []
            listed = ", ".join(quote_literal(t) for t in types)
            cols.append(
                f"(CAST({event_type_sql(part.raw.spec, part)} AS VARCHAR) IN ({listed})) AS _dropped"  # type: ignore[arg-type]
                if types
                else "false AS _dropped"
            )
        select = f"SELECT {', '.join(cols)} FROM {part.raw.rows_view}"
        verb = f"CREATE TABLE {table} AS" if i == 0 else f"INSERT INTO {table} BY NAME"
        try:
            n = con.execute(f"{verb} {select}").fetchall()[0][0]
        except duckdb.Error as err:
            raise unreadable(part.raw.label, err) from None
        offsets.append(total)
        total += int(n)
    first = con.execute(f"SELECT rowid FROM {table} LIMIT 1").fetchall()  # the first row: insertion order
    base = first[0][0] if first else 0
    return Staged(table, offsets, flags, dropped, int(base))


@dataclass
class TableCheck:
    """One contract table being checked: its sources, the staged rows, and where findings go."""

    con: duckdb.DuckDBPyConnection
    role: str
    parts: Sequence[Mapped]
    spec: DatasetSpec
    as_of: dt.datetime
    quarantine_dir: Path | None
    report: ValidationReport
    typed: str  # the numbered typed view, read only to report rows
    staged: Staged
    repeated: Future[np.ndarray] | None  # events: row hashes that occur more than once (sorted aside)

    @property
    def label(self) -> str:
        """How messages name the table: its one source, or the role when it has several."""
        return self.role if len(self.parts) > 1 else self.parts[0].raw.label

    @property
    def contract(self) -> TableContract:
        return CONTRACT[self.role]

    @property
    def mapped_cols(self) -> list[str]:
        return sorted({c for p in self.parts for c in p.selects})

    @property
    def complete_customers(self) -> bool:
        return self.spec.customers is not None and self.spec.customers.complete

    @property
    def kept_duplicates(self) -> list[str]:
        """Labels of the event sources whose exact duplicates are legitimate (``duplicates: keep``)."""
        return [p.raw.label for p in self.parts if getattr(p.raw.spec, "duplicates", "quarantine") == "keep"]
