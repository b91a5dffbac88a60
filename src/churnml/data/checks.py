"""The checks: which rows, columns and tables break the contract, found on the staged rows.

Column checks stop the run (a column where most values fail to parse has the wrong type; duplicate
customer ids make profiles ambiguous). Row checks are SQL conditions in priority order: the first
that holds names a row's issue (`row_check_cases`); `churnml.data.quarantine` applies them to the few
candidate rows. Exact duplicates are found by sorting row hashes in NumPy, customer checks on one row
per customer. Volume spikes are warnings: the data stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np

from churnml.data.report import Issue, ValidationReport
from churnml.data.sources import DataError
from churnml.data.staging import Staged, TableCheck, unreadable
from churnml.engine import quote_ident, quote_literal
from churnml.schema import CONTRACT, KIND_LABELS

__all__ = [
    "EXAMPLES",
    "JOIN_CHECKS",
    "SPIKE_RATIO",
    "SPIKE_MIN_EVENTS",
    "Totals",
    "column_totals",
    "customer_problems",
    "duplicate_ids",
    "fetch_examples",
    "local_condition",
    "no_events_warning",
    "repeated",
    "row_check_cases",
    "row_hashes",
    "scan",
    "volume_spikes",
    "wrong_type_errors",
]

EXAMPLES = 3
WRONG_TYPE_SHARE = 0.5  # a column where most values fail to parse is the wrong type, not a few bad rows
JOIN_CHECKS = {"customer_quarantined", "unknown_customer", "before_signup", "duplicate_event"}
SPIKE_RATIO = 10.0  # a day with this many times the typical daily volume is flagged
SPIKE_MIN_EVENTS = 100  # ...if it has at least this many events (tiny data is always spiky)


def scan(con: duckdb.DuckDBPyConnection, sql: str, label: str) -> list[tuple]:
    """Rows of ``sql``; a failure to read the source is a DataError naming it."""
    try:
        return con.execute(sql).fetchall()
    except duckdb.ConversionException as err:  # pragma: no cover - defensive: typed view uses TRY_CAST
        raise DataError(f"{label}: a value cannot be converted: {err}") from None
    except duckdb.Error as err:
        raise unreadable(label, err) from None


def fetch_examples(
    con: duckdb.DuckDBPyConnection, view: str, where: str, columns: Sequence[str]
) -> tuple[dict[str, object], ...]:
    """A few rows matching ``where``, by source row number, with their raw values."""
    cols = ", ".join(["_row", "_source"] + [f"CAST({quote_ident('src_' + c)} AS VARCHAR)" for c in columns])
    rows = con.execute(f"SELECT {cols} FROM {view} WHERE {where} ORDER BY _row LIMIT {EXAMPLES}").fetchall()
    return tuple(
        {"row": r[0], "source": r[1], **{c: v for c, v in zip(columns, r[2:], strict=True)}} for r in rows
    )


def row_check_cases(
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
        cases.append(("duplicate_event", None, "_dup = 2"))  # 3: a duplicate its source keeps
    return cases


def local_condition(job: TableCheck) -> str:
    """SQL true for a row that fails a check needing only the row itself."""
    cases = row_check_cases(
        job.role, job.mapped_cols, job.complete_customers, quote_literal(job.as_of.isoformat(sep=" "))
    )
    return " OR ".join(f"({cond})" for check, _, cond in cases if check not in JOIN_CHECKS) or "false"


@dataclass(frozen=True)
class Totals:
    """One pass over the staged rows: how many, how many of dropped types, bad values per column."""

    rows: int
    dropped: int
    locally_bad: int  # rows (not dropped) failing a check that needs only the row
    bad_values: dict[str, tuple[int, int]]  # flagged column -> (unreadable values, present values)
    dropped_types: dict[str, int]


def column_totals(job: TableCheck) -> Totals:
    """Counts in one scan. count_if, not count(*) FILTER: one pass over the flags instead of a selection
    per filter (0.8 s against 1.4 s on 47M events); it gives NULL on no rows, hence the coalesce."""
    staged, con = job.staged, job.con
    flags = ", ".join(f"false AS bad_{c}" for c in job.contract.column_names if c not in staged.flags)
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {staged.table}_v AS SELECT *, rowid AS _rid{', ' + flags if flags else ''}"
        f"{'' if staged.dropped else ', false AS _dropped'} FROM {staged.table}"
    )

    def count_if(cond: str) -> str:
        return f"coalesce(count_if({cond}), 0)"

    aggs = ["count(*)", count_if("_dropped")]
    for c in staged.flags:  # a present value either parses or is flagged
        aggs += [count_if(f"bad_{c}"), f"count({quote_ident(c)}) + {count_if(f'bad_{c}')}"]
    aggs.append(count_if(f"NOT _dropped AND ({local_condition(job)})"))
    totals = scan(con, f"SELECT {', '.join(aggs)} FROM {staged.table}_v", job.label)[0]
    dropped_types: dict[str, int] = {}
    if totals[1]:
        sql = f"SELECT event_type, count(*) FROM {staged.table} WHERE _dropped GROUP BY 1"
        dropped_types = dict(scan(con, sql, job.label))
    bad = {c: (int(totals[2 + 2 * i]), int(totals[3 + 2 * i])) for i, c in enumerate(staged.flags)}
    return Totals(int(totals[0]), int(totals[1]), int(totals[-1]), bad, dropped_types)


def wrong_type_errors(job: TableCheck, totals: Totals) -> bool:
    """Report each column where most present values cannot be read; whether there was one."""
    hard = False
    for c, (n_bad, n_present) in totals.bad_values.items():
        if not n_bad or n_bad < WRONG_TYPE_SHARE * n_present:
            continue
        hard = True
        kind = job.contract.column(c).kind
        fmt = next((p.raw.spec.timestamp_format for p in job.parts if p.raw.spec.timestamp_format), None)
        expected = KIND_LABELS[kind] + (f" in format {fmt!r}" if kind == "timestamp" and fmt else "")
        job.report.issues.append(Issue(
            job.label, next(p.sources[c] for p in job.parts if c in p.sources), "wrong_type", "error", n_bad,
            expected, detail=f"{n_bad:,} of {n_present:,} values cannot be read (contract column {c!r})",
            examples=fetch_examples(job.con, job.typed, f"bad_{c}", [c]),
        ))  # fmt: skip
    return hard


def duplicate_ids(job: TableCheck) -> bool:
    """Customers: report ids on several profile rows (ambiguous profiles); whether there were any."""
    if job.role != "customers":
        return False
    dupes = scan(
        job.con,
        f"SELECT count(*), sum(n), list(customer_id ORDER BY customer_id)[1:{EXAMPLES}] FROM "
        f"(SELECT customer_id, count(*) AS n FROM {job.staged.table} WHERE customer_id IS NOT NULL "
        f"GROUP BY 1 HAVING count(*) > 1)",
        job.label,
    )[0]
    if not dupes[0]:
        return False
    ids = ", ".join(repr(i) for i in dupes[2])
    job.report.issues.append(Issue(
        job.label, job.parts[0].sources["customer_id"], "duplicate_id", "error", int(dupes[1]), "each customer_id once",
        detail=f"{dupes[0]:,} customer_id value(s) appear more than once ({int(dupes[1]):,} rows), e.g. {ids}",
    ))  # fmt: skip
    return True


def row_hashes(con: duckdb.DuckDBPyConnection, staged: Staged) -> np.ndarray:
    """Every staged row's hash (`Staged.hash_sql`), for `repeated`."""
    return np.asarray(con.execute(f"SELECT {staged.hash_sql} AS h FROM {staged.table}").fetchnumpy()["h"])


def repeated(hashes: np.ndarray) -> np.ndarray:
    """Row hashes that occur more than once, found by sorting them (in place) in NumPy.

    A sort of 47M hashes takes ~1 s; a distinct count in SQL (a hash table of 47M keys) took ~8 s.
    Rows with these hashes are duplicate candidates, which the exact search that follows confirms
    (or not, on a hash collision).
    """
    hashes.sort()
    repeats = hashes[1:][hashes[1:] == hashes[:-1]]
    return np.unique(repeats) if len(repeats) else repeats


def customer_problems(job: TableCheck) -> int:
    """Customers whose rows some join check would quarantine (unknown, quarantined profile, events
    before signup), found on one row per customer instead of a join of every row.

    They are kept in ``_problem_customers`` with ``_all`` (no clean profile: every row of theirs fails)
    and ``_signup`` (rows before it fail): only those rows need the joined, row-by-row check.
    """
    first = ', min("timestamp") AS _first' if job.role == "events" else ""
    where = ["s.customer_id IN (SELECT customer_id FROM bad_customers)"]
    if job.complete_customers:
        where.append("k.customer_id IS NULL")
    if job.role == "events":
        where.append("s._first < k.signup_date")
    live = "WHERE NOT _dropped" if job.staged.dropped else ""
    job.con.execute(
        "CREATE OR REPLACE TEMP TABLE _problem_customers AS "
        "SELECT s.customer_id, k.customer_id IS NULL AS _all, k.signup_date AS _signup FROM "
        f"(SELECT customer_id{first} FROM {job.staged.table} {live} GROUP BY 1) s "
        f"LEFT JOIN customers k ON k.customer_id = s.customer_id WHERE {' OR '.join(where)}"
    )
    return int(job.con.execute("SELECT count(*) FROM _problem_customers").fetchall()[0][0])


def volume_spikes(con: duckdb.DuckDBPyConnection, daily: str) -> list[Issue]:
    """Days whose event volume is far above the typical day of their type: kept (they may be real) but
    reported. A 10x day is usually a duplicated export or a replayed pipeline; the CSM would otherwise
    see a usage surge that never happened. ``daily``: the table of `churnml.schema.EVENT_VOLUME_SQL`."""
    rows = con.execute(
        f"""
        WITH typical AS (SELECT event_type, median(events) AS med FROM {daily} GROUP BY ALL)
        SELECT d.day, d.event_type, d.events, t.med FROM {daily} d JOIN typical t USING (event_type)
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


def no_events_warning(report: ValidationReport) -> list[Issue]:
    """Valid, but every event feature would be empty: say why there are no events."""
    events = report.tables.get("events")
    if events is None or events.clean:
        return []
    gone = f"{events.rows:,} row(s) read, {events.quarantined:,} quarantined"
    if events.dropped_event_types:
        gone += f", {sum(events.dropped_event_types.values()):,} of dropped types"
    return [Issue("events", None, "no_events", "warning", 0, "at least one event (check the source path, "
                  "its filters and drop_event_types)", detail=f"no events to build features from ({gone})")]  # fmt: skip
