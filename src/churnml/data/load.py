"""Validate a dataset against the contract and load its clean tables: the one entry point of `data`.

Each table is read once, typed, into DuckDB (`staging`) and checked there (`checks`); rows that fail
leave it for the quarantine (`quarantine`). On success the session holds ``customers``, ``events`` and
``subscriptions`` in contract form, and `load_dataset` returns them as `ContractTables`, with the
report, the window of behaviour and the per-type value statistics computed once for every stage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from churnml.data import checks, quarantine
from churnml.data.mapping import SQL_TYPES, Mapped, map_table, typed_view
from churnml.data.report import DataValidationError, TableSummary, ValidationReport
from churnml.data.sources import register_raw_tables
from churnml.data.staging import TableCheck, stage
from churnml.data.tables import ContractTables, EventTypeStats, event_type_stats
from churnml.engine import quote_ident
from churnml.schema import CONTRACT, EVENT_VOLUME_SQL
from churnml.spec import DatasetSpec

__all__ = ["load_dataset", "validate_dataset"]

_DAILY = "_event_volume"  # the daily summary the spike check and the value statistics read


def load_dataset(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    quarantine_dir: Path | None = None,
    as_of: dt.datetime | None = None,
) -> ContractTables:
    """Validate and load; raise DataValidationError on hard errors (the run stops before any work), and
    DataError when a source cannot be read at all."""
    report, stats = _validate(con, spec, quarantine_dir, as_of)
    if not report.ok:
        raise DataValidationError(report)
    return ContractTables(con, report, spec.observation.observed_until, stats)


def validate_dataset(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    quarantine_dir: Path | None = None,
    as_of: dt.datetime | None = None,
) -> ValidationReport:
    """The report alone, errors included (never raises for bad data): what `churnml validate` prints."""
    return _validate(con, spec, quarantine_dir, as_of)[0]


def _validate(
    con: duckdb.DuckDBPyConnection, spec: DatasetSpec, quarantine_dir: Path | None, as_of: dt.datetime | None
) -> tuple[ValidationReport, dict[str, EventTypeStats]]:
    report = ValidationReport()
    as_of = as_of or spec.validation.as_of or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    mapped: dict[str, list[Mapped]] = {}
    for raw in register_raw_tables(con, spec):
        mapped.setdefault(raw.role, []).append(map_table(raw, report.issues))
    if report.errors:  # missing columns or impossible types: nothing else can be trusted
        return report, {}
    for role in ("customers", "subscriptions", "events"):
        if role in mapped:
            _check_table(con, role, mapped[role], spec, as_of, quarantine_dir, report)
            if report.errors:
                return report, {}
    _fill_missing_tables(con, spec, report)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_DAILY} AS {EVENT_VOLUME_SQL} ORDER BY ALL")
    try:
        report.issues.extend(checks.volume_spikes(con, _DAILY))
        stats = event_type_stats(con, _DAILY)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_DAILY}")
    report.issues.extend(checks.no_events_warning(report))
    return report, stats


def _check_table(
    con: duckdb.DuckDBPyConnection,
    role: str,
    parts: Sequence[Mapped],
    spec: DatasetSpec,
    as_of: dt.datetime,
    quarantine_dir: Path | None,
    report: ValidationReport,
) -> None:
    """Type-check, row-check, quarantine and materialise one contract table.

    The rows are loaded once (`stage`) and checked in memory. Only when some check can fail (a bad
    value, a problem customer, a repeated row hash) are rows numbered and searched one by one; a clean
    source becomes the contract table by dropping the helper columns.
    """
    contract = CONTRACT[role]
    typed = typed_view(con, role, parts)  # numbered: read only to report rows
    staged = stage(con, role, parts, [c for c in contract.column_names if any(c in p.bad for p in parts)])
    # events: the row hashes are sorted on one core while DuckDB runs the checks
    sorter = ThreadPoolExecutor(max_workers=1)
    job = TableCheck(con, role, parts, spec, as_of, quarantine_dir, report, typed, staged,
                     sorter.submit(checks.repeated, checks.row_hashes(con, staged)) if role == "events" else None)  # fmt: skip
    try:
        _check_staged(job)
    finally:
        sorter.shutdown(wait=True)
        con.execute(f"DROP VIEW IF EXISTS {staged.table}_v")
        for table in (staged.table, f"typed_{role}_rows", "_candidate_rows", "_problem_customers",
                      "_repeated_hashes", "kept_duplicates"):  # fmt: skip
            con.execute(f"DROP TABLE IF EXISTS {table}")


def _check_staged(job: TableCheck) -> None:
    """1. column checks (wrong types, duplicate ids: errors); 2. row checks into the quarantine;
    3. the clean rows become the contract table."""
    totals = checks.column_totals(job)
    if checks.wrong_type_errors(job, totals) or checks.duplicate_ids(job):
        return
    quarantine.collect_bad_rows(job, totals)
    quarantined = quarantine.report_bad_rows(job, totals)
    if quarantined is None:  # too many bad rows: an error
        return
    if quarantined:
        quarantine.write_quarantine(job)
    kept = quarantine.duplicates_kept(job)
    quarantine.keep_clean_rows(job, totals, quarantined)
    job.report.tables[job.role] = TableSummary(
        job.role,
        totals.rows,
        totals.rows - totals.dropped - quarantined,
        quarantined,
        totals.dropped_types,
        kept,
    )


def _fill_missing_tables(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, report: ValidationReport) -> None:
    """Customers = profile rows plus every id seen in events/subscriptions (for partial or absent
    profiles); an empty subscriptions table when the spec maps none."""
    ids = "SELECT DISTINCT customer_id FROM events"
    if spec.subscriptions:
        ids += " UNION SELECT DISTINCT customer_id FROM subscriptions"
    if spec.customers is None:
        cols = ", ".join(
            "customer_id"
            if c.name == "customer_id"
            else f"NULL::{SQL_TYPES[c.kind]} AS {quote_ident(c.name)}"
            for c in CONTRACT["customers"].columns
        )
        con.execute(f"CREATE OR REPLACE TABLE customers AS SELECT {cols} FROM ({ids}) ORDER BY customer_id")
        n = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]  # type: ignore[index]
        report.tables["customers"] = TableSummary("customers", 0, n, 0)
    elif not spec.customers.complete:
        con.execute(
            f"INSERT INTO customers BY NAME SELECT customer_id FROM ({ids}) "
            f"WHERE customer_id NOT IN (SELECT customer_id FROM customers)"
        )
    if not spec.subscriptions:
        cols = ", ".join(
            f"{quote_ident(c.name)} {SQL_TYPES[c.kind]}" for c in CONTRACT["subscriptions"].columns
        )
        con.execute(f"CREATE OR REPLACE TABLE subscriptions ({cols})")
