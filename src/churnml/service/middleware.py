"""The service's own ASGI layers, built once per worker from :class:`~churnml.config.Settings`.

Outermost first (:class:`ServiceMiddleware` composes them):

1. WebSocket upgrades are refused with 403 (nothing here speaks WebSocket; BentoML answered 500 with
   a traceback);
2. metrics by route template, and no ``server`` header naming the framework;
3. authentication (:mod:`churnml.service.auth`), before any body is read;
4. API bodies must be JSON (415 otherwise, a missing Content-Type included);
5. the body is received in full, counted in received bytes whatever the framing (chunked bodies
   too), within ``max_body_bytes`` (64 KiB for the pages) and ``body_timeout``: 413 or 408;
6. only then does a request take one of ``max_inflight`` slots (503 + Retry-After beyond), so slow
   senders cannot starve the service;
7. the OpenAPI document describes the errors the service really returns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any

import anyio

from churnml.config import Settings
from churnml.service.auth import AUTH_SCOPE_KEY, Authenticator, AuthMiddleware, header, send_json
from churnml.service.compute import Compute
from churnml.service.metrics import HTTPMetrics, RouteLabels
from churnml.service.parsing import COMPUTE_SCOPE_KEY, INLINE_BODY_BYTES

__all__ = ["OPEN_PATHS", "PAGE_MAX_BODY_BYTES", "ServiceMiddleware", "fix_openapi"]

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
PAGE_MAX_BODY_BYTES = 64 * 1024  # the pages take small forms only (sign-in, sign-out)
PAGES_PREFIX = "/ui"
BODY_BYTES_SCOPE_KEY = "churnml.body_bytes"
BODIES_HELD = 4  # a worker holds at most this many maximal bodies' worth of bytes at once
Scope = MutableMapping[str, Any]


def _is_page(path: str) -> bool:
    return path == PAGES_PREFIX or path.startswith(PAGES_PREFIX + "/")


class RefuseWebSocket:
    """Nothing here speaks WebSocket: close the handshake before accepting it (uvicorn answers 403)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})


class JSONOnly:
    """API bodies are JSON: another media type, or a body without one, gets 415 before it is read."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST" and not _is_page(scope.get("path", "")):
            media = header(scope, b"content-type").split(";")[0].strip().lower()
            has_body = header(scope, b"content-length").strip() not in ("", "0") or header(
                scope, b"transfer-encoding"
            )
            if media != "application/json" and (media or has_body):
                return await send_json(send, 415, b'{"error": "send the request body as application/json"}')
        return await self.app(scope, receive, send)


class BodyLimit:
    """Receives the whole body before the app runs: at most ``max_bytes`` received (whatever the
    framing) within ``timeout`` seconds, then replays it to the app.

    All bodies held at once (received or being received) stay within ``budget`` bytes: beyond, 503.
    """

    def __init__(self, app: Any, max_bytes: int, timeout: float, budget: int) -> None:
        self.app, self.max_bytes, self.timeout, self.budget = app, max_bytes, timeout, budget
        self.held = 0

    def _limit(self, scope: Scope) -> int:
        return PAGE_MAX_BODY_BYTES if _is_page(scope.get("path", "")) else self.max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length").strip()
        if not declared and not header(scope, b"transfer-encoding"):
            return await self.app(scope, receive, send)  # no body (HTTP/1.1 has no other framing)
        limit = self._limit(scope)
        if declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, 413, f"request body over {limit:,} bytes: split the batch")
        received: list[int] = [0]
        try:
            body, refusal = await self._receive(receive, limit, received)
            if refusal:
                return await self._refuse(send, *refusal)
            if body is None:
                return  # the client left: nothing to answer
            scope[BODY_BYTES_SCOPE_KEY] = received[0]
            await self.app(scope, self._replay(body, receive), send)
        finally:
            self.held -= received[0]

    async def _receive(
        self, receive: Any, limit: int, received: list[int]
    ) -> tuple[bytes | None, tuple[int, str] | None]:
        """(body, refusal): the whole body, or why it is refused (status, error); ``received[0]`` counts
        the bytes held meanwhile."""
        chunks: list[bytes] = []
        with anyio.move_on_after(self.timeout) as waited:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None, None
                chunk = message.get("body", b"")
                received[0] += len(chunk)
                self.held += len(chunk)
                if received[0] > limit:
                    return None, (413, f"request body over {limit:,} bytes: split the batch")
                if self.held > self.budget:
                    return None, (503, "overloaded (too many large bodies at once), retry later")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if waited.cancelled_caught:
            log.info(
                "request body not received within %.0f s (%d bytes so far): 408", self.timeout, received[0]
            )
            return None, (408, f"request body not received within {self.timeout:.0f} s")
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), None

    @staticmethod
    def _replay(body: bytes, receive: Any) -> Any:
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    @staticmethod
    async def _refuse(send: Any, status: int, error: str) -> None:
        # the rest of the body is not read: close the connection rather than parse it as a request
        headers = [(b"connection", b"close")] + ([(b"retry-after", b"1")] if status == 503 else [])
        await send_json(send, status, json.dumps({"error": error}).encode(), headers)


class LargeRequestGate:
    """A request with a large body waits for one of the worker's compute slots before it is parsed
    (see :meth:`churnml.service.compute.Compute.admission`)."""

    def __init__(self, app: Any, compute: Compute) -> None:
        self.app, self.compute = app, compute

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get(BODY_BYTES_SCOPE_KEY, 0) <= INLINE_BODY_BYTES:
            return await self.app(scope, receive, send)
        async with self.compute.admission():
            await self.app(scope, receive, send)


class ShedLoad:
    """Beyond ``max_inflight`` requests in progress, answer 503 with Retry-After at once."""

    def __init__(self, app: Any, max_inflight: int, retry_after: int = 1) -> None:
        self.app, self.max_inflight, self.retry_after = app, max_inflight, retry_after
        self.inflight = 0
        self.shed = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.inflight >= self.max_inflight:
            self.shed += 1
            if self.shed % 1000 == 1:
                log.warning("shedding load: %d requests in progress (limit %d), %d shed so far",
                            self.inflight, self.max_inflight, self.shed)  # fmt: skip
            return await send_json(send, 503, b'{"error": "overloaded, retry later"}',
                                   [(b"retry-after", str(self.retry_after).encode())])  # fmt: skip
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


_ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong."},
        "detail": {
            "type": "array",
            "description": "One entry per bad field: loc (path to the field), msg, type.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array"},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },  # fmt: skip
    },
}
_ERRORS = {
    "401": "Missing or wrong bearer token",
    "408": "The request body was not received in time",
    "413": "The request body is too large",
    "415": "The request body is not application/json",
    "429": "Too many wrong credentials from this client (see Retry-After)",
    "503": "Not ready, or overloaded (see Retry-After)",
    "504": "Timed out",
}


def fix_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Describe the errors the service really returns (BentoML documents ``detail`` as a string), and
    say what the service is rather than which framework version runs it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("churnml")
    except PackageNotFoundError:  # a bento runs the package from its source folder, not installed
        release = "unreleased"
    spec["info"] = {"title": "churnml churn prediction API", "version": release,
                    "description": "Churn probability, risk tier and reasons per customer (see README)."}  # fmt: skip
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["InvalidArgument"] = _ERROR_SCHEMA
    schemas["Error"] = _ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, ops in spec.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for op in ops.values():
            responses = op.setdefault("responses", {})
            for status, description in _ERRORS.items():
                responses.setdefault(status, {"description": description, "content": ref})
    spec["components"].setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    return spec


class OpenAPIDocument:
    """Serves BentoML's OpenAPI document (/docs.json) corrected by :func:`fix_openapi`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/docs.json":
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(fix_openapi(json.loads(body))).encode()
        await send_json(send, int(start.get("status", 500)), body)


class ServiceMiddleware:
    """Every layer above, with one Compute, Authenticator and metrics per worker (see the module doc)."""

    def __init__(self, app: Any, settings: Settings | None = None, routes: list[str] | None = None) -> None:
        settings = settings or Settings.from_env()
        self.compute = Compute(settings.compute_threads)
        self.auth = Authenticator.from_settings(settings)
        inner = ShedLoad(LargeRequestGate(OpenAPIDocument(app), self.compute), settings.max_inflight)
        inner = BodyLimit(inner, settings.max_body_bytes, settings.body_timeout,
                          BODIES_HELD * settings.max_body_bytes)  # fmt: skip
        inner = JSONOnly(inner)
        inner = AuthMiddleware(inner, self.auth, public=(*OPEN_PATHS, "/ui/login"), pages_prefix=PAGES_PREFIX)
        inner = HTTPMetrics(inner, RouteLabels(routes or []), settings.metrics_max_bytes)
        self.app = RefuseWebSocket(inner)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[COMPUTE_SCOPE_KEY] = self.compute
            scope[AUTH_SCOPE_KEY] = self.auth
        await self.app(scope, receive, send)
