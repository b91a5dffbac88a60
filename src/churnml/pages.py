"""The CSM workspace pages: risk list, account page and retention overview, served under ``/ui``.

A small Starlette app the prediction service mounts (``@bentoml.asgi_app(app, path="/ui")``). It
reads the DuckDB workspace that ``churnml score`` writes (``Settings.workspace_path``), opened
read-only per request: a re-score replaces the file atomically, so the next request sees the new
scores and a request in flight keeps the file it opened. Pages are rendered on the server (Jinja2,
autoescaped) with matplotlib SVG charts and need no JavaScript or external network.

Auth is :mod:`churnml.service.auth`, shared with the API: ``Authorization: Bearer <token>`` or a
page session. Browsers cannot send that header on navigation, so ``/login`` exchanges a token for a
signed, expiring session cookie (:mod:`churnml.service.sessions`); sign-in and sign-out forms carry a
CSRF token and refuse other sites' origins. The app checks credentials itself too, so it is never
served unprotected wherever it is mounted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import duckdb
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from churnml import charts
from churnml.config import Settings
from churnml.engine import connect, quote_literal
from churnml.service.auth import Authenticator, AuthMiddleware
from churnml.service.signin import SignIn, signed_in_context

__all__ = [
    "DEFAULT_CAPACITY",
    "PAGE_SIZE",
    "PUBLIC_PATHS",
    "RiskFilters",
    "WorkspaceMissing",
    "account",
    "create_pages_app",
    "export_rows",
    "open_workspace",
    "overview",
    "parse_list_params",
    "risk_list",
]

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/ui/login",)  # full paths in the service: the middleware lets these through without a token
PAGE_SIZE = 100  # rows per page of the risk list: 200k accounts must not render at once
DEFAULT_CAPACITY = 20  # accounts a CSM team can call in a week, until they say otherwise
MAX_CAPACITY = 1_000_000
TIERS = ("high", "medium", "low")

# Pages hold customer data and run no scripts: forbid scripts outright, keep them out of frames and caches.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# CSV cells a spreadsheet would run as a formula (OWASP "CSV injection"); text cells starting so get a quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class WorkspaceMissing(LookupError):
    """No workspace file yet: scoring has not run (the pages answer 503, not 500)."""


class BadRequest(ValueError):
    """A query parameter the pages cannot use; the message names it."""


# ------------------------------------------------------------------------------------------ data


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


def _records(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    sql = "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'workspace'"
    return {r[0] for r in con.execute(sql).fetchall()}


def _meta(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    if "meta" not in _tables(con):
        return {}
    rows = _records(con, "SELECT * FROM meta LIMIT 1")
    return rows[0] if rows else {}


@dataclass(frozen=True)
class RiskFilters:
    """The risk list's filters: exact tier/segment/owner, and a customer id substring (any case)."""

    tier: str = ""
    segment: str = ""
    owner: str = ""
    search: str = ""

    def where(self) -> tuple[str, list[Any]]:
        """SQL condition and parameters (values are always bound, never spliced into the SQL)."""
        clauses, params = ["TRUE"], []
        for column, value in (("risk_tier", self.tier), ("segment", self.segment), ("csm_owner", self.owner)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.search:
            clauses.append("contains(lower(customer_id), lower(?))")
            params.append(self.search)
        return " AND ".join(clauses), params

    def query(self) -> dict[str, str]:
        return {k: v for k, v in (("tier", self.tier), ("segment", self.segment), ("owner", self.owner),
                                  ("q", self.search)) if v}  # fmt: skip


def _int_param(params: QueryParams, name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number, got '{raw[:40]}'") from None
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}, got {value}")
    return value


def parse_list_params(params: QueryParams) -> tuple[RiskFilters, int, int]:
    """(filters, capacity, page) from the risk list's query string; raises BadRequest naming the parameter."""
    filters = RiskFilters(
        tier=params.get("tier", "").strip(), segment=params.get("segment", "").strip(),
        owner=params.get("owner", "").strip(), search=params.get("q", "").strip()[:200],
    )  # fmt: skip
    capacity = _int_param(params, "capacity", DEFAULT_CAPACITY, 0, MAX_CAPACITY)
    page = _int_param(params, "page", 1, 1, 10_000_000)
    return filters, capacity, page


_RANKED = """
WITH filtered AS (
    SELECT *, row_number() OVER (ORDER BY revenue_at_risk DESC NULLS LAST, customer_id) AS position
    FROM scores WHERE {where}
)
"""


def risk_list(
    con: duckdb.DuckDBPyConnection, filters: RiskFilters, capacity: int, page: int, page_size: int = PAGE_SIZE
) -> dict[str, Any]:
    """One page of accounts by revenue at risk, the totals of the filtered set and the call list's share.

    The call list is the best-value set for the team's capacity: the ``capacity`` filtered accounts
    with the most revenue at risk (``position`` = rank within the filtered rows).
    """
    where, params = filters.where()
    ranked = _RANKED.format(where=where)
    count, total, covered, called = con.execute(
        ranked + "SELECT count(*), coalesce(sum(revenue_at_risk), 0), "
        "coalesce(sum(revenue_at_risk) FILTER (WHERE position <= ?), 0), count(*) FILTER (WHERE position <= ?) "
        "FROM filtered",
        [*params, capacity, capacity],
    ).fetchone()  # fmt: skip
    pages = max(1, math.ceil(count / page_size))
    page = min(page, pages)
    rows = _records(con, ranked + "SELECT * FROM filtered ORDER BY position LIMIT ? OFFSET ?",
                    [*params, page_size, (page - 1) * page_size])  # fmt: skip
    return {
        "rows": rows, "count": count, "total_revenue_at_risk": total, "covered_revenue_at_risk": covered,
        "called": called, "covered_share": covered / total if total else 0.0, "page": page, "pages": pages,
        "first": (page - 1) * page_size + 1 if count else 0, "last": min(count, page * page_size),
    }  # fmt: skip


def filter_options(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """The values the filter menus offer (tiers in risk order, then anything unexpected)."""

    def distinct(column: str) -> list[str]:
        sql = f"SELECT DISTINCT {column} FROM scores WHERE {column} IS NOT NULL ORDER BY 1"
        return [str(r[0]) for r in con.execute(sql).fetchall()]

    found = distinct("risk_tier")
    tiers = [t for t in TIERS if t in found] + [t for t in found if t not in TIERS]
    return {"tiers": tiers, "segments": distinct("segment"), "owners": distinct("csm_owner")}


EXPORT_COLUMNS = ["position", "customer_id", "revenue_at_risk", "probability", "risk_tier", "health_score", "mrr",
                  "csm_owner", "segment", "plan", "top_reason", "top_play", "as_of"]  # fmt: skip


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def export_rows(con: duckdb.DuckDBPyConnection, filters: RiskFilters, capacity: int) -> Iterator[str]:
    """The filtered risk list as CSV text chunks (all rows, in list order, with the call-list flag)."""
    where, params = filters.where()
    columns = ", ".join(EXPORT_COLUMNS)
    cursor = con.execute(
        _RANKED.format(where=where) + f"SELECT {columns}, position <= ? AS in_call_list FROM filtered ORDER BY position",
        [*params, capacity],
    )  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*EXPORT_COLUMNS, "in_call_list"])
    while True:
        batch = cursor.fetchmany(5000)
        if not batch:
            break
        writer.writerows([_csv_cell(v) for v in row] for row in batch)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    sql = "SELECT column_name FROM information_schema.columns WHERE table_catalog = 'workspace' AND table_name = ?"
    return {r[0] for r in con.execute(sql, [table]).fetchall()}


def _reasons_by_kind(con: duckdb.DuckDBPyConnection, customer_id: str) -> dict[str, list[dict[str, Any]]]:
    """The account's problems, protective factors and context (a workspace from before kinds: all problems)."""
    kind = "" if "kind" in _columns(con, "reasons") else ", 'problem' AS kind"
    rows = _records(con, f"SELECT *{kind} FROM reasons WHERE customer_id = ? ORDER BY rank", [customer_id])
    out: dict[str, list[dict[str, Any]]] = {"problem": [], "protective": [], "context": []}
    for r in rows:
        out.setdefault(r["kind"], []).append(r)
    return out


def account(con: duckdb.DuckDBPyConnection, customer_id: str) -> dict[str, Any] | None:
    """Score, reasons by kind with plays, score history and what changed since the previous score; None
    if unknown. Below the medium tier no action is needed: the page leads with what keeps risk low."""
    found = _records(con, "SELECT * FROM scores WHERE customer_id = ?", [customer_id])
    if not found:
        return None
    reasons = _reasons_by_kind(con, customer_id)
    history = _records(
        con, "SELECT * FROM score_history WHERE customer_id = ? ORDER BY observation_date", [customer_id]
    )
    change = None
    if len(history) >= 2:
        before, now = history[-2], history[-1]
        lines = (
            _records(
                con,
                "SELECT * FROM reason_changes WHERE customer_id = ? ORDER BY status = 'gone', status, signal",
                [customer_id],
            )  # fmt: skip
            if "reason_changes" in _tables(con)
            else []
        )
        change = {
            "before": before,
            "now": now,
            "delta": now["probability"] - before["probability"],
            "lines": lines,
        }
    score = found[0]
    return {"score": score, "problems": reasons["problem"], "protective": reasons["protective"],
            "context": reasons["context"], "action_needed": score["risk_tier"] != "low", "history": history,
            "change": change}  # fmt: skip


def overview(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The retention tables (None where the workspace predates them)."""
    tables = _tables(con)

    def table(name: str, order: str) -> list[dict[str, Any]] | None:
        return _records(con, f"SELECT * FROM {name} ORDER BY {order}") if name in tables else None

    return {
        "monthly": table("retention_monthly", "month"),
        "cohorts": table("cohort_retention", "cohort, months_since"),
        "segments": table("segment_summary", "revenue_at_risk DESC NULLS LAST, segment"),
    }


# ------------------------------------------------------------------------------------------ charts


def _month(value: Any) -> str:
    return value.strftime("%Y-%m") if hasattr(value, "strftime") else str(value)


def _day(value: Any) -> str:
    return value.strftime("%Y-%m-%d") if hasattr(value, "strftime") else str(value)


def account_charts(data: dict[str, Any]) -> dict[str, str]:
    out = {}
    history = data["history"]
    if history:
        out["history"] = charts.line_chart(
            [_day(h["observation_date"]) for h in history], [h["probability"] for h in history],
            "Churn probability at each score",
        )  # fmt: skip
    shown = data["problems"] if data["action_needed"] else data["protective"]
    if shown:
        title = (
            "What drives this account's risk"
            if data["action_needed"]
            else "What keeps this account's risk low"
        )
        out["reasons"] = charts.contributions_chart(
            [r["label"] or r["feature"] for r in shown], [r["contribution"] for r in shown], title
        )
    return out


def overview_charts(data: dict[str, Any]) -> dict[str, str]:
    out = {}
    monthly = data["monthly"]
    if monthly:
        months = [_month(m["month"]) for m in monthly]
        out["churn"] = charts.line_chart(months, [m["churn_rate"] for m in monthly], "Monthly churn rate",
                                         colour=charts.RISK_COLOUR)  # fmt: skip
        out["retention"] = charts.line_chart(
            months, [m["retention_rate"] for m in monthly], "Monthly retention rate"
        )
        out["nrr"] = charts.line_chart(
            months, [m["nrr"] for m in monthly], "Net revenue retention (MRR a month later)"
        )
        out["nps"] = charts.line_chart(months, [m.get("nps") for m in monthly], "NPS (-100 to 100)",
                                       value_format=lambda v: f"{v:.0f}")  # fmt: skip
    cohorts = data["cohorts"]
    if cohorts:
        curves: dict[str, tuple[list[int], list[float]]] = {}
        for c in cohorts:
            months_since, retention = curves.setdefault(_month(c["cohort"]), ([], []))
            months_since.append(int(c["months_since"]))
            retention.append(c["retention"])
        out["cohorts"] = charts.cohort_curves([(k, m, r) for k, (m, r) in curves.items()], "Cohort retention")
    segments = data["segments"]
    if segments:
        names = [str(s["segment"]) for s in segments]
        out["cltv"] = charts.bar_chart(
            names, [s["cltv"] for s in segments], "Customer lifetime value by segment"
        )
        out["segment_risk"] = charts.bar_chart(names, [s["revenue_at_risk"] for s in segments],
                                               "Revenue at risk by segment", colour=charts.RISK_COLOUR)  # fmt: skip
    return out


def cohort_table(cohorts: list[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """Cohorts as rows (newest first) and months since start as columns, for the overview's table."""
    months = sorted({int(c["months_since"]) for c in cohorts})
    rows: dict[str, dict[str, Any]] = {}
    for c in cohorts:
        row = rows.setdefault(
            _month(c["cohort"]), {"cohort": _month(c["cohort"]), "size": c["size"], "cells": {}}
        )
        row["cells"][int(c["months_since"])] = c["retention"]
    return months, sorted(rows.values(), key=lambda r: r["cohort"], reverse=True)


# ------------------------------------------------------------------------------------------ auth


def _safe_next(request: Request, target: str) -> str:
    """Where to go after login: only a path inside these pages (never another site)."""
    base = _base(request)
    inside = target.startswith(f"{base}/") and not target.startswith("//") and "\\" not in target
    return target if inside else f"{base}/"


# ------------------------------------------------------------------------------------------ app


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings.from_env()


def _base(request: Request) -> str:
    """The mount prefix ('/ui' in the service, '' when served alone): every link is built on it."""
    return request.scope.get("root_path", "").rstrip("/")


def _environment():  # noqa: ANN202 - jinja2 stays an implementation detail
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("churnml", "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    env.filters.update(
        money=charts.format_money, percent=charts.format_percent, day=_day, month=_month,
        amount=lambda v: "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:,.0f}",
        path_segment=lambda v: quote(str(v), safe=""), query=lambda d: urlencode(d),
    )  # fmt: skip
    return env


class _Pages:
    """The route handlers; holds the template environment and, if given, fixed settings."""

    def __init__(self, settings: Settings | None) -> None:
        self.fixed_settings = settings
        self.env = _environment()
        # the overview's charts take most of a second to draw: drawn once per workspace file
        self._overview: tuple[tuple, dict[str, Any]] | None = None

    @property
    def settings(self) -> Settings:
        return _settings(self.fixed_settings)

    def workspace(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        settings = self.settings
        return open_workspace(settings.workspace_path, settings)

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context = {"base": _base(request), "meta": {}, **signed_in_context(request), **context}
        html = self.env.get_template(template).render(context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def message(
        self, request: Request, status: int, title: str, text: str, command: str | None = None
    ) -> Response:
        return self.render(request, "message.html", status, title=title, text=text, command=command)

    # ---------------------------------------------------------------------- pages

    def risk_page(self, request: Request) -> Response:
        filters, capacity, page = parse_list_params(request.query_params)
        with self.workspace() as con:
            data = risk_list(con, filters, capacity, page)
            options, meta = filter_options(con), _meta(con)
        query = {**filters.query(), "capacity": str(capacity)}
        return self.render(request, "risk_list.html", filters=filters, capacity=capacity, options=options,
                           meta=meta, query=query, **data)  # fmt: skip

    def export_csv(self, request: Request) -> Response:
        filters, capacity, _ = parse_list_params(request.query_params)
        with self.workspace() as con:  # fails before the response starts if there is no workspace
            as_of = _meta(con).get("as_of")
        workspace = self.workspace()

        def chunks() -> Iterator[str]:
            with workspace as con:
                yield from export_rows(con, filters, capacity)

        name = f"churn-risk-{_day(as_of) if as_of else 'latest'}.csv"
        headers = {**_SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
        return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8", headers=headers)

    def account_page(self, request: Request) -> Response:
        customer_id = request.path_params["customer_id"]
        with self.workspace() as con:
            data, meta = account(con, customer_id), _meta(con)
        if data is None:
            text = (f"No account '{customer_id}' in the latest scores (as of {_day(meta.get('as_of'))}). It may "
                    "have churned, be new since the last score, or the id may be mistyped.")  # fmt: skip
            return self.render(request, "message.html", 404, title="Unknown account", text=text, command=None)
        return self.render(request, "account.html", meta=meta, charts=account_charts(data), **data)

    def overview_page(self, request: Request) -> Response:
        path = self.settings.workspace_path
        try:
            stat = path.stat()
            key: tuple = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            key = ()
        cached = self._overview
        if key and cached is not None and cached[0] == key:
            context = cached[1]
        else:
            with self.workspace() as con:
                data, meta = overview(con), _meta(con)
            months, cohort_rows = cohort_table(data["cohorts"]) if data["cohorts"] else ([], [])
            context = dict(meta=meta, charts=overview_charts(data), cohort_months=months, cohort_rows=cohort_rows,
                           **data)  # fmt: skip
            if key:
                self._overview = (key, context)
        return self.render(request, "overview.html", **context)

    # ---------------------------------------------------------------------- errors as pages

    async def no_workspace(self, request: Request, exc: Exception) -> Response:
        return self.message(request, 503, "No scores yet", f"There is no workspace at {exc} yet.",
                            command="churnml score --spec <your spec.yaml>")  # fmt: skip

    async def unreadable(self, request: Request, exc: Exception) -> Response:
        path = self.settings.workspace_path
        log.error("pages: workspace %s could not be read: %s", path, exc)
        return self.message(request, 503, "Scores unreadable",
                            f"The workspace at {path} could not be read ({type(exc).__name__}); re-run scoring "
                            "to rebuild it.", command="churnml score --spec <your spec.yaml>")  # fmt: skip

    async def bad_request(self, request: Request, exc: Exception) -> Response:
        return self.message(request, 400, "Bad request", str(exc))

    async def http_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return self.message(request, exc.status_code, "Error", str(exc.detail))
        return self.message(request, 404, "Not found", f"There is no page at {request.url.path}.")


def create_pages_app(
    settings: Settings | None = None, authenticator: Authenticator | None = None
) -> Starlette:
    """The pages as an ASGI app, to mount at ``/ui``.

    Args:
        settings: fixed settings (tests, embedding); by default ``Settings.from_env()`` is read per
            request, so the workspace path follows the service's environment.
        authenticator: who may read the pages; by default the service's (when mounted in it), else one
            made from the settings at the first request.
    """
    pages = _Pages(settings)
    sign_in = SignIn(pages.render, _safe_next)
    routes = [
        Route("/", pages.risk_page, name="risk_list"),
        Route("/export.csv", pages.export_csv, name="export_csv"),
        Route("/accounts/{customer_id:path}", pages.account_page, name="account"),
        Route("/overview", pages.overview_page, name="overview"),
        Route("/login", sign_in.login, methods=["GET", "POST"], name="login"),
        Route("/logout", sign_in.logout, methods=["POST"], name="logout"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthMiddleware, make_auth=authenticator or (lambda: Authenticator.from_settings(
            _settings(settings))), public=("/login",))],
        exception_handlers={
            WorkspaceMissing: pages.no_workspace, duckdb.Error: pages.unreadable, BadRequest: pages.bad_request,
            HTTPException: pages.http_error,
        },
    )  # fmt: skip
