"""The CSM pages as a Starlette app the prediction service mounts under ``/ui``.

Pages are rendered on the server (Jinja2, autoescaped, matplotlib SVG charts) and need no JavaScript:
sorting, filters and paging are links and GET forms, recording is POST forms carrying the CSRF token
of the shared sign-in code (:mod:`churnml.service.signin`). Scores come from the DuckDB workspace
(:mod:`.queries`), what CSMs record from the CSM store (:mod:`churnml.workspace.store`), opened once
per process and URL.

Auth is :mod:`churnml.service.auth`, shared with the API: a bearer token or a page session. The app
checks credentials itself too, so it is never served unprotected wherever it is mounted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import duckdb
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from churnml.config import Settings
from churnml.impact.report import impact_report, report_rows
from churnml.service.auth import IDENTITY_SCOPE_KEY, Authenticator, AuthMiddleware
from churnml.service.signin import NO_SIGN_IN, SignIn, form_allowed, signed_in_context
from churnml.workspace import alerts as alerting
from churnml.workspace.holdouts import impact_outcomes
from churnml.workspace.pages import forms, queries, views
from churnml.workspace.pages.health import model_health
from churnml.workspace.pages.params import number_param
from churnml.workspace.store import OUTCOMES, Store, StoreError, open_store

__all__ = ["PUBLIC_PATHS", "create_pages_app"]

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/ui/login",)  # full paths in the service: the middleware lets these through without a token

# Pages hold customer data and run no scripts: forbid scripts outright, keep them out of frames and caches.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _base(request: Request) -> str:
    """The mount prefix ('/ui' in the service, '' when served alone): every link is built on it."""
    return request.scope.get("root_path", "").rstrip("/")


def _safe_next(request: Request, target: str) -> str:
    """Where to go after login: only a path inside these pages (never another site)."""
    base = _base(request)
    inside = target.startswith(f"{base}/") and not target.startswith("//") and "\\" not in target
    return target if inside else f"{base}/"


def _author(request: Request) -> str:
    identity = request.scope.get(IDENTITY_SCOPE_KEY)
    return identity.name if identity is not None else NO_SIGN_IN


def _close_stores(stores: dict[str, Store]) -> None:
    for store in stores.values():
        store.close()


class _Pages:
    """The route handlers; holds the templates, the open stores and, if given, fixed settings."""

    def __init__(self, settings: Settings | None) -> None:
        self.fixed_settings = settings
        self.env = views.environment()
        self._overview: tuple[tuple, dict[str, Any]] | None = (
            None  # the overview's charts, per workspace file
        )
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()
        # pages dropped by their owner (an embedding app, a test) close their stores' pooled connections
        weakref.finalize(self, _close_stores, self._stores)

    @property
    def settings(self) -> Settings:
        return self.fixed_settings if self.fixed_settings is not None else Settings.from_env()

    def workspace(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        settings = self.settings
        return queries.open_workspace(settings.workspace_path, settings)

    def store(self) -> Store:
        """The CSM store for the current settings, opened (and migrated) at its first use."""
        url = self.settings.store_url
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url)
            return self._stores[url]

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context = {
            "base": _base(request),
            "meta": {},
            "outcomes": OUTCOMES,
            **signed_in_context(request),
            **context,
        }
        html = self.env.get_template(template).render(context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def message(
        self, request: Request, status: int, title: str, text: str, command: str | None = None
    ) -> Response:
        return self.render(request, "message.html", status, title=title, text=text, command=command)

    # ---------------------------------------------------------------------- risk list

    def risk_page(self, request: Request) -> Response:
        params = queries.parse_list_params(request.query_params)
        states = self.store().states(today=queries.today())
        with self.workspace() as con:
            data = queries.risk_list(con, params, states)
            options, meta = queries.filter_options(con, states), queries.meta(con)
        owner = next((o for o in options["owners"] if o.lower() == params.owner.lower()), params.owner)
        return self.render(request, "risk_list.html", p=params, options=options, meta=meta, owner_label=owner,
                           definition=views.revenue_definition(meta), list_query=urlencode(params.query()),
                           sorts=queries.SORTS, holdouts=views.holdout_note(meta), **data)  # fmt: skip

    def export_csv(self, request: Request) -> Response:
        params = queries.parse_list_params(request.query_params)
        states = self.store().states(today=queries.today())
        with self.workspace() as con:  # fails before the response starts if there is no workspace
            as_of = queries.meta(con).get("as_of")
        workspace = self.workspace()
        link = f"{request.url.scheme}://{request.url.netloc}{_base(request)}/accounts/"

        def chunks() -> Iterator[str]:
            with workspace as con:
                yield from views.export_csv(queries.risk_rows(con, params, states), link)

        name = f"churn-risk-{views.day(as_of) if as_of else 'latest'}.csv"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
        return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8", headers=headers)

    # ---------------------------------------------------------------------- account

    def account_page(
        self, request: Request, status: int = 200, form_error: str | None = None, back: str | None = None
    ) -> Response:
        """The account page; ``back`` is the risk list's query (by default the page's ``from``; a refused
        form hands on its own, so the list's filters survive the error)."""
        requested = request.path_params["customer_id"]
        back = forms.back_query(request.query_params.get("from", "") if back is None else back)
        with self.workspace() as con:
            customer_id, meta = queries.find_customer(con, requested), queries.meta(con)
            data = queries.account(con, customer_id) if customer_id else None
        if data is None:
            text = (f"No account '{requested}' in the latest scores (as of {views.day(meta.get('as_of'))}). It may "
                    "have churned, be new since the last score, or the id may be mistyped.")  # fmt: skip
            return self.render(request, "message.html", 404, title="Unknown account", text=text, command=None)
        store = self.store()
        state = store.states([customer_id], today=queries.today()).get(customer_id)
        return self.render(request, "account.html", status, meta=meta, charts=views.account_charts(data, meta),
                           back=back, activities=store.activities(customer_id), state=state, form_error=form_error,
                           tenure=queries.tenure_text(data["score"].get("tenure_days")), today=queries.today(),
                           tomorrow=queries.today() + dt.timedelta(days=1),
                           definition=views.revenue_definition(meta), other_play=forms.OTHER_PLAY, **data)  # fmt: skip

    async def account(self, request: Request) -> Response:
        """GET: the account page; POST: one of its forms (``action`` = activity, assign or snooze)."""
        if request.method == "GET":
            return await run_in_threadpool(self.account_page, request)
        fields = await request.form(**forms.FORM_LIMITS)
        if not form_allowed(request, str(fields.get("csrf", ""))):
            log.warning("pages: a form was refused: from another site or without its CSRF token")
            return self.message(request, 403, "Form refused", "This form came from another site or an old page. "
                                "Reload the account page and try again.")  # fmt: skip
        return await run_in_threadpool(self.record, request, fields)

    def record(self, request: Request, fields: Any) -> Response:
        """Append what the form says to the store, then back to the page (303, so a reload does not repeat it)."""
        requested, action = request.path_params["customer_id"], str(fields.get("action", ""))
        with self.workspace() as con:
            customer_id = queries.find_customer(con, requested)
            data = queries.account(con, customer_id) if customer_id else None
        if data is None or customer_id is None:
            return self.message(
                request, 404, "Unknown account", f"No account '{requested}' in the latest scores."
            )
        try:
            self._apply(action, customer_id, fields, data["suggested_plays"], _author(request))
        except (queries.BadRequest, StoreError) as err:
            request.scope["path_params"] = {"customer_id": customer_id}
            return self.account_page(request, 400, form_error=str(err), back=str(fields.get("from", "")))
        back = forms.back_query(str(fields.get("from", "")))
        target = f"{_base(request)}/accounts/{quote(customer_id, safe='')}" + (
            f"?{urlencode({'from': back})}" if back else ""
        )
        return RedirectResponse(
            f"{target}#{'activity' if action == 'activity' else 'ownership'}", status_code=303
        )

    def _apply(self, action: str, customer_id: str, fields: Any, suggested: list[str], author: str) -> None:
        store, today = self.store(), queries.today()
        if action == "activity":
            store.record_activity(forms.activity_from_form(customer_id, fields, suggested), author, today)
        elif action == "assign":
            store.assign(customer_id, str(fields.get("owner", "")), author)
        elif action == "snooze":
            until = None if fields.get("wake") else forms.required_date(fields, "until")
            store.snooze(customer_id, until, str(fields.get("reason", "")), author, today)
        else:
            raise queries.BadRequest(f"'action': one of activity, assign, snooze, got '{action[:20]}'")

    # ---------------------------------------------------------------------- overview, alerts, model health

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
                data, meta = queries.overview(con), queries.meta(con)
            months, cohort_rows = views.cohort_table(data["cohorts"]) if data["cohorts"] else ([], [])
            context = dict(meta=meta, charts=views.overview_charts(data, str(meta.get("currency") or "")),
                           cohort_months=months, cohort_rows=cohort_rows, **data)  # fmt: skip
            if key:
                self._overview = (key, context)
        return self.render(request, "overview.html", **context, **self._impact(context["meta"]))

    def _impact(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The impact panel: read from the store on every request (outcomes arrive between scores)."""
        settings = self.settings
        outcomes, pending = impact_outcomes(self.store())
        share = (
            float(meta["holdout_share"])
            if meta.get("holdout_share") not in (None, "")
            else settings.holdout_share
        )
        report = impact_report(outcomes, pending, share, settings.play_cost, settings.impact_min_effect)
        return {"impact": report, "impact_rows": report_rows(report), "holdouts": views.holdout_note(meta),
                "min_effect": settings.impact_min_effect}  # fmt: skip

    def _crossings(self, request: Request) -> tuple[list[alerting.Crossing], float, dict[str, Any], set]:
        rise = number_param(request.query_params, "rise", self.settings.alert_min_rise, 0, 100, float)
        states = self.store().states(today=queries.today())
        with self.workspace() as con:
            crossings, meta = alerting.find_crossings(con, rise, states), queries.meta(con)
        sent = self.store().alerts_already_sent((c.customer_id, c.record().score_date) for c in crossings)
        return crossings, rise, meta, sent

    def alerts_page(self, request: Request) -> Response:
        crossings, rise, meta, sent = self._crossings(request)
        owners: dict[str, list[alerting.Crossing]] = {}
        for c in crossings:
            owners.setdefault(c.owner or "(no owner)", []).append(c)
        return self.render(request, "alerts.html", meta=meta, owners=owners, rise=rise, count=len(crossings),
                           sent={cid for cid, _ in sent})  # fmt: skip

    def alerts_csv(self, request: Request) -> Response:
        crossings, _, meta, _ = self._crossings(request)
        link = f"{request.url.scheme}://{request.url.netloc}{_base(request)}/accounts/"
        name = f"churn-alerts-{views.day(meta.get('as_of')) if meta.get('as_of') else 'latest'}.csv"
        headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
        return Response(
            alerting.alerts_csv(crossings, link), media_type="text/csv; charset=utf-8", headers=headers
        )

    def model_page(self, request: Request) -> Response:
        health = model_health(self.settings.monitoring_path)
        meta: dict[str, Any] = {}
        with contextlib.suppress(queries.WorkspaceMissing, duckdb.Error), self.workspace() as con:
            meta = queries.meta(con)
        return self.render(request, "model.html", health=health, meta=meta)

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

    async def store_down(self, request: Request, exc: Exception) -> Response:
        url = sa.engine.make_url(self.settings.store_url).render_as_string(hide_password=True)
        log.error("pages: the CSM store %s failed: %s", url, exc)
        return self.message(request, 503, "Activity log unavailable", f"The CSM store at {url} could not be "
                            f"reached ({type(exc).__name__}); scores are fine, try again shortly.")  # fmt: skip

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
        Route("/accounts/{customer_id:path}", pages.account, methods=["GET", "POST"], name="account"),
        Route("/overview", pages.overview_page, name="overview"),
        Route("/alerts", pages.alerts_page, name="alerts"),
        Route("/alerts.csv", pages.alerts_csv, name="alerts_csv"),
        Route("/model", pages.model_page, name="model"),
        Route("/login", sign_in.login, methods=["GET", "POST"], name="login"),
        Route("/logout", sign_in.logout, methods=["POST"], name="logout"),
    ]
    make_auth = authenticator or (lambda: Authenticator.from_settings(pages.settings))
    return Starlette(
        routes=routes,
        middleware=[Middleware(AuthMiddleware, make_auth=make_auth, public=("/login",))],
        exception_handlers={
            queries.WorkspaceMissing: pages.no_workspace, duckdb.Error: pages.unreadable,
            queries.BadRequest: pages.bad_request, sa.exc.SQLAlchemyError: pages.store_down,
            HTTPException: pages.http_error,
        },
    )  # fmt: skip
