"""Quarantine: the rows that fail a row check leave the table, counted, reported and written aside.

Bad rows are few (bounded by ``validation.max_quarantine_fraction``), so they are found from
candidates (a local check fails, a problem customer, a repeated row hash), numbered in their source,
checked one by one with the joins, and collected once into ``bad_<table>``, which the counts, the
examples, the quarantine file and the clean table all read. An event source with ``duplicates: keep``
keeps its exact duplicates: they are counted and reported as a warning instead.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from churnml.data.checks import (
    Totals,
    customer_problems,
    fetch_examples,
    local_condition,
    row_check_cases,
    scan,
)
from churnml.data.mapping import typed_view
from churnml.data.report import ROW_CHECKS, Issue
from churnml.data.staging import TableCheck, unreadable
from churnml.engine import quote_ident, quote_literal

__all__ = [
    "DELETE_SHARE", "collect_bad_rows", "duplicates_kept", "keep_clean_rows", "report_bad_rows", "write_quarantine",
]  # fmt: skip

# Rows leave the loaded table by DELETE (no copy) unless more than 1/DELETE_SHARE of them go: deleted
# rows stay in memory and every later scan steps over them.
DELETE_SHARE = 10


def _candidates(job: TableCheck, totals: Totals, duplicates: bool, problems: bool) -> tuple[str, str]:
    """Number the candidate rows in their sources; (the typed view of them, the problem-customer join)."""
    con, staged = job.con, job.staged
    candidate, problem_join = [f"({local_condition(job)})"], ""
    if problems:
        problem_join = (
            "LEFT JOIN (SELECT customer_id AS _pid, _all, _signup FROM _problem_customers) p "
            "ON customer_id = p._pid"
        )
        candidate.append("p._all" + (' OR "timestamp" < p._signup' if job.role == "events" else ""))
    if duplicates:
        con.register("_repeated_df", pd.DataFrame({"h": job.repeated.result()}))  # type: ignore[union-attr]
        con.execute("CREATE OR REPLACE TEMP TABLE _repeated_hashes AS SELECT h FROM _repeated_df")
        con.unregister("_repeated_df")
        candidate.append(f"{staged.hash_sql} IN (SELECT h FROM _repeated_hashes)")
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _candidate_rows AS SELECT _part, {staged.source_row_sql('_rid')} AS _row "
            f"FROM {staged.table}_v {problem_join} WHERE NOT _dropped AND ({' OR '.join(candidate)})"
        )
        return typed_view(con, job.role, job.parts, rows="_candidate_rows"), problem_join
    except duckdb.Error as err:  # the source is read again here: it may have changed or broken
        raise unreadable(job.label, err) from None


def _cases(job: TableCheck) -> list[tuple[str, str | None, str]]:
    as_of = quote_literal(job.as_of.isoformat(sep=" "))
    return row_check_cases(job.role, job.mapped_cols, job.complete_customers, as_of)


def _joins(job: TableCheck, rows_view: str, duplicates: bool) -> tuple[str, list[str]]:
    """Joins and columns the join checks read: the customer's profile, its quarantine, duplicates."""
    if job.role in ("events", "subscriptions") and job.spec.customers is not None:
        joins = (
            "LEFT JOIN (SELECT customer_id AS _cid, signup_date AS _signup FROM customers) k ON t.customer_id = k._cid "
            "LEFT JOIN (SELECT DISTINCT customer_id AS _qid FROM bad_customers) q ON t.customer_id = q._qid"
        )
        extra = ["k._cid AS _known", "k._signup AS _signup", "q._qid AS _bad_customer"]
    else:
        joins = ""
        extra = ["NULL::VARCHAR AS _known", "NULL::TIMESTAMP AS _signup", "NULL::VARCHAR AS _bad_customer"]
    if job.role == "events":
        # exact duplicates among the candidates (every row of a repeated hash is one): all but the first of
        # a source's identical rows are flagged; 3 marks those of a source that keeps them (not an issue)
        job.con.execute(
            f"CREATE OR REPLACE TEMP TABLE dup_events AS SELECT _source AS _dsource, _row_hash AS _dhash, "
            f"min(_row) AS _first FROM {rows_view} {'' if duplicates else 'WHERE false'} "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        )
        joins += " LEFT JOIN dup_events dp ON t._source = dp._dsource AND t._row_hash = dp._dhash"
        keep = ", ".join(quote_literal(s) for s in job.kept_duplicates) or "NULL"
        extra.append(
            "CASE WHEN dp._first IS NULL OR t._row = dp._first THEN 1 "
            f"WHEN t._source IN ({keep}) THEN 3 ELSE 2 END AS _dup"
        )
    return joins, extra


def collect_bad_rows(job: TableCheck, totals: Totals) -> None:
    """Create ``bad_<role>`` (row, source, customer, issue, raw values) and ``kept_duplicates``."""
    con = job.con
    joined_checks = job.role in ("events", "subscriptions") and job.spec.customers is not None
    duplicates = job.repeated is not None and len(job.repeated.result()) > 0
    problems = joined_checks and customer_problems(job) > 0
    search = bool(totals.locally_bad) or duplicates or problems
    rows_view = _candidates(job, totals, duplicates, problems)[0] if search else job.typed
    joins, extra = _joins(job, rows_view, duplicates)
    case_sql = " ".join(
        f"WHEN {cond} THEN {quote_literal(check + ':' + (col or ''))}" for check, col, cond in _cases(job)
    )
    src_cols = ", ".join(
        f"CAST({quote_ident('src_' + c)} AS VARCHAR) AS {quote_ident('src_' + c)}" for c in job.mapped_cols
    )
    checked = (
        f"SELECT *, CASE {case_sql} END AS _issue FROM (SELECT t.*, {', '.join(extra)} FROM {rows_view} t {joins} "
        f"WHERE NOT t._dropped{'' if search else ' AND false'})"
    )
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _checked_rows AS {checked}")
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE bad_{job.role} AS SELECT _row, _source, customer_id, _issue, {src_cols} "
            "FROM _checked_rows WHERE _issue IS NOT NULL"
        )
        kept = "_issue IS NULL AND _dup = 3" if job.role == "events" else "false"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE kept_duplicates AS SELECT _row, _source, {src_cols} FROM _checked_rows WHERE {kept}"
        )
    except duckdb.Error as err:
        raise unreadable(job.label, err) from None
    finally:
        con.execute("DROP TABLE IF EXISTS _checked_rows")


def report_bad_rows(job: TableCheck, totals: Totals) -> int | None:
    """Count and report the quarantined rows per source and check, and the duplicates kept; None (and
    an error) when more rows are bad than the spec tolerates."""
    con, bad = job.con, f"bad_{job.role}"
    counts = scan(con, f"SELECT _source, _issue, count(*) FROM {bad} GROUP BY 1, 2 ORDER BY 1, 2", job.label)
    for source, issue_code, n in counts:  # per source, so a message names the file and column
        check, col = issue_code.split(":", 1)
        part = next(p for p in job.parts if p.raw.label == source)
        src_col = part.sources.get(col, col) if col else None
        detail = f"{n:,} row(s) quarantined ({check.replace('_', ' ')})"
        if check == "duplicate_event":
            detail += "; set `duplicates: keep` on this source if identical rows are legitimate (e.g. same-day orders in a date-only log)"
        where = f"_issue = {quote_literal(issue_code)} AND _source = {quote_literal(source)}"
        job.report.issues.append(Issue(source, src_col, check, "quarantine", n, ROW_CHECKS[check], detail=detail,
                                       examples=fetch_examples(con, bad, where, job.mapped_cols)))  # fmt: skip
    for source, n in scan(
        con, "SELECT _source, count(*) FROM kept_duplicates GROUP BY 1 ORDER BY 1", job.label
    ):
        job.report.issues.append(Issue(
            source, None, "duplicate_kept", "warning", n, "each event once, or repeats kept on purpose (duplicates: keep)",
            detail=f"{n:,} exact duplicate row(s) kept (duplicates: keep)",
            examples=fetch_examples(con, "kept_duplicates", f"_source = {quote_literal(source)}", job.mapped_cols),
        ))  # fmt: skip
    quarantined = sum(n for *_, n in counts)
    kept = totals.rows - totals.dropped
    limit = job.spec.validation.max_quarantine_fraction
    if kept and quarantined / kept > limit:
        job.report.issues.append(Issue(
            job.label, None, "too_many_bad_rows", "error", quarantined,
            f"at most {limit:.1%} bad rows (validation.max_quarantine_fraction)",
            detail=f"{quarantined:,} of {kept:,} rows ({quarantined / kept:.1%}) are bad",
        ))  # fmt: skip
        return None
    return quarantined


def duplicates_kept(job: TableCheck) -> int:
    return int(job.con.execute("SELECT count(*) FROM kept_duplicates").fetchall()[0][0])


def write_quarantine(job: TableCheck) -> None:
    """``<quarantine_dir>/<table>.parquet``: each bad row's source, row number, issue and raw values."""
    if job.quarantine_dir is None:
        return
    job.quarantine_dir.mkdir(parents=True, exist_ok=True)
    path = job.quarantine_dir / f"{job.role}.parquet"
    raw_cols = ", ".join(f"{quote_ident('src_' + c)} AS {quote_ident(c)}" for c in job.mapped_cols)
    job.con.execute(
        f"COPY (SELECT _row AS source_row, _source AS source, split_part(_issue, ':', 1) AS issue, "
        f"NULLIF(split_part(_issue, ':', 2), '') AS issue_column, {raw_cols} FROM bad_{job.role} "
        f"ORDER BY _source, _row) TO {quote_literal(str(path))} (FORMAT parquet)"
    )
    job.report.quarantine_files[job.role] = path


def keep_clean_rows(job: TableCheck, totals: Totals, quarantined: int) -> None:
    """The staged table becomes the contract table: the few rows that go are deleted and the helper
    columns dropped (no copy); when many go (dropped event types), the rest is copied instead."""
    con, staged, role = job.con, job.staged, job.role
    gone = quarantined + totals.dropped
    bad_rowids = f"SELECT {staged.row_sql(job.parts)} AS _rid FROM bad_{role}"
    try:
        if gone * DELETE_SHARE > totals.rows:
            keep = [f"t.{quote_ident(c)}" for c in job.contract.column_names]
            keep += [f"t.{quote_ident(a)}" for p in job.parts for a in p.attributes]
            anti = f" ANTI JOIN ({bad_rowids}) b ON t.rowid = b._rid" if quarantined else ""
            live = " WHERE NOT t._dropped" if staged.dropped else ""
            con.execute(
                f"CREATE OR REPLACE TABLE {role} AS SELECT {', '.join(keep)} FROM {staged.table} t{anti}{live}"
            )
            return
        if gone:
            where = ["_dropped"] if totals.dropped else []
            if quarantined:
                where.append(f"rowid IN (SELECT _rid FROM ({bad_rowids}))")
            con.execute(f"DELETE FROM {staged.table} WHERE {' OR '.join(where)}")
        helpers = ["_part", *(["_row_hash"] if role == "events" else []), *(f"bad_{c}" for c in staged.flags)]
        if staged.dropped:
            helpers.append("_dropped")
        for col in helpers:
            con.execute(f"ALTER TABLE {staged.table} DROP COLUMN {quote_ident(col)}")
        con.execute(f"DROP TABLE IF EXISTS {role}")
        con.execute(f"ALTER TABLE {staged.table} RENAME TO {role}")
    except duckdb.Error as err:
        raise unreadable(job.label, err) from None
