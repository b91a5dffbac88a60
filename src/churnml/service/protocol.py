"""A header timeout for uvicorn, which has none: slow senders cannot hold connections open forever.

uvicorn closes idle keep-alive connections, but once the first byte of a request arrives it waits for
the rest of the headers without limit (a "slowloris" sends one byte now and then). This protocol
gives a request ``header_timeout`` seconds from its first byte (or from the connection) to finish its
request line and headers, then answers 408 and closes. Header size is bounded by h11 already (16 KiB).
The body has its own timeout in :class:`churnml.service.middleware.BodyLimit`.

BentoML builds uvicorn's ``Config`` itself and offers no option for this, so :func:`install` makes
this class uvicorn's HTTP protocol (and turns off uvicorn's own proxy-header handling); it must run in
the worker before the server starts, i.e. when the service module is imported.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "install"]

log = logging.getLogger(__name__)

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request line and headers."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # bytes of a request whose headers are not complete yet
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is not h11.IDLE:  # a pipelined request was parsed at once
            self._disarm()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being written: the keep-alive logic closes later
        log.info("request headers not received within %.0f s: closing the connection", self.header_timeout)
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def install(header_timeout: float) -> None:
    """Make uvicorn (in this process) use :class:`GuardedH11Protocol` for HTTP/1.1, and trust no
    proxy headers itself.

    uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 by default and rewrites the client address,
    so any local process (or a proxy forwarding whatever the client sent) could pose as any address
    and dodge the lockout; ``CHURNML_TRUSTED_PROXIES`` (churnml.service.auth) decides instead.
    """
    import os

    import uvicorn.config

    os.environ["FORWARDED_ALLOW_IPS"] = ""  # read when uvicorn's Config is made, after this import
    GuardedH11Protocol.header_timeout = header_timeout
    target = f"{__name__}:GuardedH11Protocol"
    uvicorn.config.HTTP_PROTOCOLS["auto"] = target
    uvicorn.config.HTTP_PROTOCOLS["h11"] = target
