"""Where the service's heavy work runs: a few threads off the event loop, stopped with the request.

The event loop answers probes, the login form and small requests; anything that can take more than a
few milliseconds (parsing a large body, raw behaviour, many feature records) runs here instead. The
threads are few on purpose: Python threads share one interpreter lock, so every busy thread delays
the event loop's turn, and ``/readyz`` must answer within 100 ms however many large requests arrive.

A request that ends early (BentoML's timeout answered 504, or the client left) cancels its task; the
work in the thread then stops at its next :meth:`Stop.check` instead of running on unseen.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ["Compute", "RequestEnded", "Stop"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RequestEnded(Exception):  # noqa: N818 - not an error: the request is gone
    """The request this work was for has ended (timed out or the client left)."""


class Stop:
    """A flag the event loop raises when the request ends; the worker thread checks it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def check(self) -> None:
        """Raise :class:`RequestEnded` if the request has ended (call between steps of long work)."""
        if self._event.is_set():
            raise RequestEnded


NEVER = Stop()  # for work run inline, which nothing can interrupt anyway


class Compute:
    """A bounded set of worker threads for one service worker process."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None  # made on first use, inside the event loop
        self._admission: anyio.Semaphore | None = None
        self.abandoned = 0

    def _capacity(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return self._limiter

    def admission(self) -> anyio.Semaphore:
        """Held by a large request from its parse to its answer: only ``threads`` large requests have
        their objects in memory at once (parsing eight 20 MB bodies ahead of answering any held four
        million objects, and the garbage collector's passes over them stalled the event loop)."""
        if self._admission is None:
            self._admission = anyio.Semaphore(self.threads)
        return self._admission

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args, stop=...)`` in a worker thread; if the request ends first, the thread is told
        to stop and the caller gets the cancellation at once."""
        stop = Stop()
        call = functools.partial(func, *args, stop=stop)
        try:
            return await anyio.to_thread.run_sync(call, limiter=self._capacity(), abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            self.abandoned += 1
            log.info("request ended before its work finished: stopping it (%d so far)", self.abandoned)
            raise
        finally:
            stop.set()
