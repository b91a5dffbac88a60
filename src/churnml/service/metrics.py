"""Prometheus metrics at ``/metrics`` with labels that cannot grow: route templates, not paths.

BentoML labelled every request by its raw path: 300 unique 2 KB paths grew the open ``/metrics`` from
385 KB to 13.5 MB, and it showed which account pages were opened. Here a request is labelled by the
route template it matched (``/ui/accounts/{customer_id}``), every other path by ``unmatched``, any other
method by ``OTHER``; the number of label sets is capped, and the document itself is cut at
``metrics_max_bytes``. With several workers the figures are summed across them (Prometheus'
multiprocess mode, which BentoML sets up).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["HTTPMetrics", "RouteLabels", "UNMATCHED"]

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"
OVERFLOW = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_LABEL_SETS = 200  # (route, method, status) combinations counted; later ones count under "other"


class RouteLabels:
    """Maps a request path to the template of the route that serves it."""

    def __init__(self, templates: Iterable[str]) -> None:
        from starlette.routing import compile_path

        templates = list(templates)
        self._exact = {t for t in templates if "{" not in t}
        self._patterns = [(compile_path(t)[0], t) for t in templates if "{" in t]

    def __call__(self, path: str) -> str:
        if path in self._exact:
            return path
        for regex, template in self._patterns:
            if regex.match(path):
                return template.replace(":path}", "}")
        return UNMATCHED


class HTTPMetrics:
    """Counts requests and their duration per route template; serves ``/metrics``."""

    def __init__(self, app: Any, routes: RouteLabels, max_bytes: int) -> None:
        self.app, self.routes, self.max_bytes = app, routes, max_bytes
        self._made: tuple[Any, Any, Any] | None = None  # registry, counter, histogram: made in the worker
        self._label_sets: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def _metrics(self) -> tuple[Any, Any, Any]:
        if self._made is None:
            # imported here, not at module import: the worker must have PROMETHEUS_MULTIPROC_DIR first
            import prometheus_client as prom

            registry = prom.CollectorRegistry()
            total = prom.Counter("churnml_http_requests", "HTTP requests by route template, method and status",
                                 ["route", "method", "status"], registry=registry)  # fmt: skip
            duration = prom.Histogram("churnml_http_request_duration_seconds", "HTTP request duration by route",
                                      ["route"], buckets=BUCKETS, registry=registry)  # fmt: skip
            self._made = (registry, total, duration)
        return self._made

    def _labels(self, route: str, method: str, status: int) -> tuple[str, str, str]:
        labels = (route, method if method in METHODS else "OTHER", str(status))
        with self._lock:
            if labels in self._label_sets:
                return labels
            if len(self._label_sets) < MAX_LABEL_SETS:
                self._label_sets.add(labels)
                return labels
        return (OVERFLOW, OVERFLOW, OVERFLOW)

    def _record(self, route: str, method: str, status: int, seconds: float) -> None:
        _, total, duration = self._metrics()
        total.labels(*self._labels(route, method, status)).inc()
        duration.labels(route).observe(seconds)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") == "/metrics":
            return await self._serve(send)
        route, method, began = (
            self.routes(scope.get("path", "")),
            scope.get("method", ""),
            time.perf_counter(),
        )
        status, recorded = 0, False

        async def counted(message: MutableMapping[str, Any]) -> None:
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not recorded:
                recorded = True  # counted before the last byte leaves: a client sees its request in /metrics
                self._record(route, method, status, time.perf_counter() - began)
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except anyio.get_cancelled_exc_class():
            status = status or 504  # cancelled by the request timeout, which answers 504
            raise
        finally:
            if not recorded:
                self._record(route, method, status or 500, time.perf_counter() - began)

    def render(self) -> bytes:
        """The Prometheus text, at most ``max_bytes`` (cut at a line)."""
        import prometheus_client as prom

        registry = self._metrics()[0]
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        text = prom.generate_latest(registry)
        if len(text) > self.max_bytes:
            log.warning("/metrics is %d bytes, over the %d-byte cap: cut", len(text), self.max_bytes)
            text = text[: text.rfind(b"\n", 0, self.max_bytes) + 1]
        return text

    async def _serve(self, send: Any) -> None:
        body = await anyio.to_thread.run_sync(self.render)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
