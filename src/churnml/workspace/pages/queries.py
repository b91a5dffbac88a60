"""What the pages read: the DuckDB workspace `churnml score` writes, with the CSM store laid over it.

The workspace is opened read-only per request (a re-score replaces the file atomically: the next
request sees the new scores, a request in flight keeps the file it opened). What CSMs recorded
(assignments, snoozes, the last touch) comes from :mod:`churnml.workspace.store` and is joined in as a
small frame, so filters, sorting and the call list see the owner a CSM assigned and skip snoozed
accounts. Values are always bound, never spliced into SQL; names come from fixed lists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from churnml.config import Settings
from churnml.engine import connect, quote_literal
from churnml.workspace.pages.params import (
    CALL_BY,
    DEFAULT_CAPACITY,
    DEFAULT_OWNER_CAPACITY,
    MISSING_IS_OLDEST,
    PAGE_SIZE,
    SORTS,
    TIERS,
    BadRequest,
    ListParams,
    parse_list_params,
)
from churnml.workspace.store import AccountState

__all__ = [
    "DEFAULT_CAPACITY", "DEFAULT_OWNER_CAPACITY", "PAGE_SIZE", "SORTS", "TIERS", "BadRequest", "ListParams",
    "WorkspaceMissing", "account", "filter_options", "find_customer", "meta", "open_workspace", "overview",
    "parse_list_params", "risk_list", "risk_rows",
]  # fmt: skip

OPTIONAL_COLUMNS = {"name": "VARCHAR", "renewal_date": "TIMESTAMP", "probability_change": "DOUBLE",
                    "previous_probability": "DOUBLE", "previous_tier": "VARCHAR", "previous_date": "TIMESTAMP",
                    "seats": "DOUBLE", "seats_used": "DOUBLE", "tenure_days": "DOUBLE", "holdout_arm": "VARCHAR",
                    "uplift": "DOUBLE", "expected_revenue_saved": "DOUBLE"}  # fmt: skip


class WorkspaceMissing(LookupError):
    """No workspace file yet: scoring has not run (the pages answer 503, not 500)."""


@contextlib.contextmanager
def open_workspace(path: Path, settings: Settings | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the workspace file, closed after use.

    The file is ATTACHed to a fresh in-memory database rather than opened with ``duckdb.connect(path)``:
    DuckDB shares one instance per path within a process, so while any request still held the old file
    open, a plain connect would keep serving the scores a re-score has already replaced.
    """
    if not path.is_file():
        raise WorkspaceMissing(str(path))
    con = connect(settings, spill=False)
    try:
        con.execute(f"ATTACH {quote_literal(str(path))} AS workspace (READ_ONLY)")
        con.execute("USE workspace")
        yield con
    finally:
        con.close()


def records(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    sql = "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'workspace'"
    return {r[0] for r in con.execute(sql).fetchall()}


def columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    sql = "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'workspace' AND table_name = ?"
    return {r[0] for r in con.execute(sql, [table]).fetchall()}


def meta(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    if "meta" not in tables(con):
        return {}
    rows = records(con, "SELECT * FROM meta LIMIT 1")
    return rows[0] if rows else {}


# ------------------------------------------------------------------------------------------ risk list


def _state_frame(states: Mapping[str, AccountState]) -> pd.DataFrame:
    rows = [(s.customer_id, s.owner, s.snoozed_until, s.snooze_reason, s.last_touch, s.next_step_on)
            for s in states.values()]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["customer_id", "assigned_owner", "snoozed_until", "snooze_reason",
                                        "last_touch", "next_step_on"])  # fmt: skip
    for column in ("snoozed_until", "last_touch", "next_step_on"):
        frame[column] = pd.to_datetime(frame[column]).astype("datetime64[us]")
    return frame.astype({"customer_id": str, "assigned_owner": object, "snooze_reason": object})


def _ranked_sql(con: duckdb.DuckDBPyConnection, p: ListParams) -> tuple[str, list[Any]]:
    """The list's rows: scores with the store's state, filtered, each with its place by revenue at risk
    (``position``) and on the call list (``call_rank``: skipping snoozed accounts, those below the
    minimum tier and those held out as this campaign's control group)."""
    have = columns(con, "scores")
    optional = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in OPTIONAL_COLUMNS.items() if c not in have)
    tiers = {"high": ("high",), "medium": ("high", "medium"), "": TIERS}[p.min_tier]
    where, params = p.where()
    sql = f"""
    WITH base AS (
        SELECT s.*{", " + optional if optional else ""}, coalesce(st.assigned_owner, s.csm_owner) AS owner,
               st.assigned_owner, st.snoozed_until, st.snooze_reason, st.last_touch, st.next_step_on
        FROM scores s LEFT JOIN _state st USING (customer_id)),
    filtered AS (
        SELECT *, row_number() OVER (ORDER BY revenue_at_risk DESC NULLS LAST, customer_id) AS position
        FROM base WHERE {where}),
    callable AS (
        SELECT customer_id, row_number() OVER (ORDER BY {CALL_BY[p.call_by]} DESC NULLS LAST, customer_id) AS call_rank
        FROM filtered WHERE snoozed_until IS NULL AND lower(risk_tier) IN ({", ".join("?" * len(tiers))})
            AND coalesce(CAST(holdout_arm AS VARCHAR), '') <> 'control'),
    ranked AS (
        SELECT f.*, c.call_rank, coalesce(c.call_rank <= ?, FALSE) AS in_call_list
        FROM filtered f LEFT JOIN callable c USING (customer_id))
    """
    return sql, [*params, *tiers, p.call_capacity]


@contextlib.contextmanager
def _with_state(con: duckdb.DuckDBPyConnection, states: Mapping[str, AccountState]) -> Iterator[None]:
    con.register("_state", _state_frame(states))
    try:
        yield
    finally:
        con.unregister("_state")


def risk_list(
    con: duckdb.DuckDBPyConnection,
    p: ListParams,
    states: Mapping[str, AccountState],
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """One page of accounts in the chosen order, the totals of the filtered set and the call list's share.

    The call list is the best-value set for the capacity: the accounts with the most revenue at risk
    among the filtered ones that are not snoozed and are at or above the minimum tier.
    """
    ranked, params = _ranked_sql(con, p)
    with _with_state(con, states):
        count, total, covered, called = con.execute(
            ranked + "SELECT count(*), coalesce(sum(revenue_at_risk), 0), "
            "coalesce(sum(revenue_at_risk) FILTER (WHERE in_call_list), 0), count(*) FILTER (WHERE in_call_list) "
            "FROM ranked", params,
        ).fetchone()  # fmt: skip
        pages = max(1, math.ceil(count / page_size))
        page = min(p.page, pages)
        order = _order(p)
        rows = records(con, ranked + f"SELECT * FROM ranked ORDER BY {order} LIMIT ? OFFSET ?",
                       [*params, page_size, (page - 1) * page_size])  # fmt: skip
    return {
        "rows": rows, "count": count, "total_revenue_at_risk": total, "covered_revenue_at_risk": covered,
        "called": called, "covered_share": covered / total if total else 0.0, "page": page, "pages": pages,
        "first": (page - 1) * page_size + 1 if count else 0, "last": min(count, page * page_size),
    }  # fmt: skip


def _order(p: ListParams) -> str:
    """The list's ORDER BY: the chosen column and direction, missing values last (never contacted
    counts as longest ago), then the list's own order."""
    column, _ = SORTS[p.sort]
    first = p.sort in MISSING_IS_OLDEST and p.direction == "asc"
    return f"{column} {p.direction.upper()} NULLS {'FIRST' if first else 'LAST'}, position"


def risk_rows(
    con: duckdb.DuckDBPyConnection, p: ListParams, states: Mapping[str, AccountState], batch: int = 5000
) -> Iterator[list[dict[str, Any]]]:
    """Every filtered row in the list's order, in batches (the CSV export)."""
    ranked, params = _ranked_sql(con, p)
    with _with_state(con, states):
        cursor = con.execute(ranked + f"SELECT * FROM ranked ORDER BY {_order(p)}", params)
        names = [d[0] for d in cursor.description]
        while chunk := cursor.fetchmany(batch):
            yield [dict(zip(names, row, strict=True)) for row in chunk]


def filter_options(
    con: duckdb.DuckDBPyConnection, states: Mapping[str, AccountState]
) -> dict[str, list[str]]:
    """The values the filter menus offer (tiers in risk order, then anything unexpected)."""

    def distinct(column: str) -> list[str]:
        sql = f"SELECT DISTINCT {column} FROM scores WHERE {column} IS NOT NULL ORDER BY 1"
        return [str(r[0]) for r in con.execute(sql).fetchall()]

    found = distinct("risk_tier")
    tiers = [t for t in TIERS if t in found] + [t for t in found if t not in TIERS]
    owners = sorted(set(distinct("csm_owner")) | {s.owner for s in states.values() if s.owner})
    return {"tiers": tiers, "segments": distinct("segment"), "owners": owners}


# ------------------------------------------------------------------------------------------ account


def find_customer(con: duckdb.DuckDBPyConnection, requested: str) -> str | None:
    """The account id as the workspace spells it: the exact id, else the only one equal in any case."""
    found = [r[0] for r in con.execute("SELECT customer_id FROM scores WHERE lower(customer_id) = lower(?)",
                                       [requested]).fetchall()]  # fmt: skip
    if requested in found:
        return requested
    return found[0] if len(found) == 1 else None


def _reasons_by_kind(con: duckdb.DuckDBPyConnection, customer_id: str) -> dict[str, list[dict[str, Any]]]:
    """The account's problems, protective factors and context (a workspace from before kinds: all problems)."""
    kind = "" if "kind" in columns(con, "reasons") else ", 'problem' AS kind"
    rows = records(con, f"SELECT *{kind} FROM reasons WHERE customer_id = ? ORDER BY rank", [customer_id])
    out: dict[str, list[dict[str, Any]]] = {"problem": [], "protective": [], "context": []}
    for r in rows:
        out.setdefault(r["kind"], []).append(r)
    return out


def _usage(con: duckdb.DuckDBPyConnection, customer_id: str, as_of: Any) -> dict[str, Any] | None:
    """Events per month of the main event types over the workspace's usage window (0 where none)."""
    if "usage_monthly" not in tables(con):
        return None
    rows = records(
        con, "SELECT month, event_type, events FROM usage_monthly WHERE customer_id = ?", [customer_id]
    )
    months = [r[0] for r in con.execute("SELECT DISTINCT month FROM usage_monthly ORDER BY 1").fetchall()]
    types = [r[0] for r in con.execute("SELECT event_type FROM usage_monthly GROUP BY 1 ORDER BY sum(events) DESC, 1")
             .fetchall()]  # fmt: skip
    counts = {(r["event_type"], r["month"]): int(r["events"]) for r in rows}
    return {"months": months, "series": [(t, [counts.get((t, m), 0) for m in months]) for t in types]}


def account(con: duckdb.DuckDBPyConnection, customer_id: str) -> dict[str, Any] | None:
    """Score, context, reasons by kind with plays, score history, usage and what changed since the
    previous score; None if unknown. Below the medium tier no action is needed."""
    found = records(con, "SELECT * FROM scores WHERE customer_id = ?", [customer_id])
    if not found:
        return None
    score = {**{c: None for c in OPTIONAL_COLUMNS}, **found[0]}
    reasons = _reasons_by_kind(con, customer_id)
    history = records(con, "SELECT * FROM score_history WHERE customer_id = ? ORDER BY observation_date",
                      [customer_id])  # fmt: skip
    change = None
    if len(history) >= 2:
        before, now = history[-2], history[-1]
        lines = (
            records(
                con,
                "SELECT * FROM reason_changes WHERE customer_id = ? ORDER BY status = 'gone', status, signal",
                [customer_id],
            )  # fmt: skip
            if "reason_changes" in tables(con)
            else []
        )
        change = {
            "before": before,
            "now": now,
            "delta": now["probability"] - before["probability"],
            "lines": lines,
        }
    plays = sorted({r["play"] for r in reasons["problem"] if r.get("play")})
    return {"score": score, "problems": reasons["problem"], "protective": reasons["protective"],
            "context": reasons["context"], "action_needed": score["risk_tier"] != "low", "history": history,
            "change": change, "usage": _usage(con, customer_id, score.get("as_of")), "suggested_plays": plays}  # fmt: skip


def tenure_text(days: float | None) -> str:
    """'2 years 3 months' from a number of days (what a CSM says, not 823 days)."""
    if days is None or not math.isfinite(days):
        return "–"
    months = int(days // (365.25 / 12))
    years, months = divmod(months, 12)
    parts = [f"{years} year{'s' * (years != 1)}"] * (years > 0) + [f"{months} month{'s' * (months != 1)}"]
    return " ".join(parts) if days >= 30 else f"{int(days)} days"


# ------------------------------------------------------------------------------------------ overview


def overview(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The retention tables (None where the workspace predates them)."""
    found = tables(con)

    def table(name: str, order: str) -> list[dict[str, Any]] | None:
        return records(con, f"SELECT * FROM {name} ORDER BY {order}") if name in found else None

    window = table("retention_window", "data_end")
    return {
        "monthly": table("retention_monthly", "month"),
        "cohorts": table("cohort_retention", "cohort, months_since"),
        "segments": table("segment_summary", "revenue_at_risk DESC NULLS LAST, segment"),
        "window": window[0] if window else None,
    }


def today() -> dt.date:
    return dt.date.today()
