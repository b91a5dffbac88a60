"""What validation found: issues (errors, quarantined rows, warnings) and per-table row counts.

Problems are sorted into three kinds:

* **errors** stop the run before any work: a missing file or column, a column of the wrong type,
  duplicate customer ids, or more bad rows than the spec tolerates;
* **quarantined rows** (an unparseable or future timestamp, an event for an unknown customer, a
  negative MRR, ...) are written to ``<quarantine_dir>/<table>.parquet`` with the reason and counted;
* **warnings** leave the data as it is (a volume spike, exact duplicates a source keeps on purpose).

Nothing is dropped silently: every row read is clean, quarantined, or of an event type the spec drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Severity", "Issue", "TableSummary", "ValidationReport", "DataValidationError", "ROW_CHECKS"]

Severity = Literal["error", "quarantine", "warning"]

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
    "duplicate_event": "each event once (exact duplicates are quarantined; `duplicates: keep` keeps them)",
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
    duplicates_kept: int = 0  # exact duplicate rows of sources that keep them (`duplicates: keep`)


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
            if t.duplicates_kept:
                line += f", {t.duplicates_kept:,} exact duplicates kept"
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
