"""One authentication for the API and the CSM pages, configured from :class:`~churnml.config.Settings`.

Credentials: the application token (``CHURNML_API_TOKEN``) and named users' tokens (`churnml users
add NAME`), sent as ``Authorization: Bearer <token>``, or a page session cookie
(:mod:`churnml.service.sessions`) made by signing in with one of them. With neither a token nor a user
configured, nothing is asked (a local, single-user service).

Wrong credentials are counted per client on every route, bearer tokens and cookies alike: after
``auth_attempts`` in ``auth_window`` seconds the client's wrong credentials get 429 with Retry-After.
The right credential is never locked out, so an attacker sharing an address (a NAT, a proxy) with the
users cannot lock them out. The lockout slows guessing down and keeps it out of the logs; what makes
guessing hopeless is the tokens' length (user tokens are 256 random bits; choose the application
token likewise). The client is the peer address, or, only when the peer is one of
``trusted_proxies``, the nearest untrusted address in ``X-Forwarded-For``.
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import cookie_parser

from churnml.config import Settings
from churnml.service.sessions import SESSION_COOKIE, Session, SessionSigner, session_key
from churnml.service.users import UserStore, token_digest

__all__ = ["APP_TOKEN_NAME", "AUTH_SCOPE_KEY", "IDENTITY_SCOPE_KEY", "Authenticator", "Identity", "Lockout"]

log = logging.getLogger(__name__)

APP_TOKEN_NAME = "application token"  # who a request signed with CHURNML_API_TOKEN is
AUTH_SCOPE_KEY = "churnml.auth"  # the service's Authenticator, for the pages mounted inside it
IDENTITY_SCOPE_KEY = "churnml.identity"  # who the request is, once authenticated


@dataclass(frozen=True)
class Identity:
    name: str  # a user's name, or APP_TOKEN_NAME
    session: Session | None = None  # set when signed in through the pages


def header(scope: Any, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


class Lockout:
    """Per client: at most ``attempts`` wrong credentials in ``window`` seconds, then 429 for wrong ones.

    Only the latest ``attempts`` failure times are kept per client, and at most ``max_clients``
    clients (the least recently failing are forgotten), so a flood cannot grow memory.
    """

    def __init__(self, attempts: int = 5, window: float = 60.0, max_clients: int = 10_000) -> None:
        self.attempts, self.window, self.max_clients = attempts, window, max_clients
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _wait(self, times: collections.deque[float] | None, now: float) -> int:
        if times is None or len(times) < self.attempts or now - times[0] >= self.window:
            return 0
        return max(1, math.ceil(self.window - (now - times[0])))

    def retry_after(self, client: str) -> int:
        """Seconds until ``client``'s wrong credentials are looked at again; 0 if they are now."""
        with self._lock:
            return self._wait(self._failures.get(client), time.monotonic())

    def failed(self, client: str) -> tuple[int, int]:
        """Count a wrong credential: (seconds the client was locked for before it, and after it)."""
        now = time.monotonic()
        with self._lock:
            times = self._failures.pop(client, None) or collections.deque(maxlen=self.attempts)
            before = self._wait(times, now)
            times.append(now)
            self._failures[client] = times  # most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
            return before, self._wait(times, now)


def _networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class Authenticator:
    """Checks credentials, counts failures and signs page sessions, for one worker process."""

    def __init__(self, api_token: str | None, users: UserStore, signer: SessionSigner, lockout: Lockout,
                 trusted_proxies: Iterable[str] = ()) -> None:  # fmt: skip
        self.api_token, self.users, self.signer, self.lockout = api_token, users, signer, lockout
        self._proxies = _networks(trusted_proxies)

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        signer = SessionSigner(session_key(settings), settings.session_max_age,
                               settings.home / ".churnml-revoked-sessions")  # fmt: skip
        return cls(settings.api_token, UserStore(settings.users_path), signer,
                   Lockout(settings.auth_attempts, settings.auth_window), settings.trusted_proxies)  # fmt: skip

    @property
    def enabled(self) -> bool:
        """Whether requests need a credential (an application token or any user is configured)."""
        return self.api_token is not None or bool(self.users.users())

    # ---------------------------------------------------------------------- who is asking

    def _trusted(self, address: Any) -> bool:
        return any(address in net for net in self._proxies)

    def _from_trusted_proxy(self, scope: Any) -> bool:
        peer = _ip((scope.get("client") or ("",))[0] or "")
        return peer is not None and self._trusted(peer)

    def public_origin(self, scope: Any) -> tuple[str, str]:
        """The scheme and host the browser used: behind a trusted proxy (which ends TLS and may rewrite
        ``Host``), the ones it forwarded in ``X-Forwarded-Proto`` and ``X-Forwarded-Host``."""
        scheme, host = str(scope.get("scheme") or "http"), header(scope, b"host").strip().lower()
        if self._from_trusted_proxy(scope):
            proto = header(scope, b"x-forwarded-proto").split(",")[0].strip().lower()
            forwarded = header(scope, b"x-forwarded-host").split(",")[0].strip().lower()
            scheme = proto if proto in ("http", "https") else scheme
            host = forwarded or host
        return scheme, host

    def client(self, scope: Any) -> str:
        """The client's address: the peer, or behind a trusted proxy the address it forwarded for."""
        peer = _ip((scope.get("client") or ("",))[0] or "")
        if peer is None:
            return "unknown"
        if not self._trusted(peer):
            return str(peer)
        hops = [h for h in header(scope, b"x-forwarded-for").split(",") if h.strip()]
        for hop in reversed(hops):  # the right-most entries were added by our own proxies
            address = _ip(hop)
            if address is None:
                break  # a garbled header: trust nothing beyond the proxy we know
            if not self._trusted(address):
                return str(address)
        return str(peer)

    # ---------------------------------------------------------------------- credentials

    def fingerprint(self, name: str) -> str | None:
        """What a session made from ``name``'s credential is bound to (None: no such credential now)."""
        if name == APP_TOKEN_NAME:
            return "app:" + token_digest(self.api_token)[:16] if self.api_token else None
        user = self.users.get(name)
        return "user:" + user.digest[:16] if user else None

    def check_token(self, token: str) -> Identity | None:
        if self.api_token is not None and hmac.compare_digest(token.encode(), self.api_token.encode()):
            return Identity(APP_TOKEN_NAME)
        user = self.users.find(token) if token else None
        return Identity(user.name) if user else None

    def check_cookie(self, value: str) -> tuple[Identity | None, bool]:
        """(identity, forged) for a session cookie; an expired or signed-out one is neither."""
        session, forged = self.signer.read(value)
        if session is None:
            return None, forged
        current = self.fingerprint(session.subject)
        if current is None or not hmac.compare_digest(current, session.fingerprint):
            return None, False  # the credential was re-issued or removed since: sign in again
        return Identity(session.subject, session), False

    def authenticate(self, scope: Any) -> tuple[Identity | None, bool]:
        """(identity, presented_wrong): who the request is, or whether it carried a wrong credential."""
        scheme, _, credential = header(scope, b"authorization").partition(" ")
        if scheme:
            identity = self.check_token(credential.strip()) if scheme.lower() == "bearer" else None
            if identity is not None:
                return identity, False
            wrong = True
        else:
            wrong = False
        cookie = cookie_parser(header(scope, b"cookie")).get(SESSION_COOKIE, "")
        if cookie:
            identity, forged = self.check_cookie(cookie)
            if identity is not None:
                return identity, False
            wrong = wrong or forged
        return None, wrong

    def failed(self, client: str, where: str) -> int:
        """Count a wrong credential from ``client``; the seconds it was already locked for (then its
        wrong credentials get 429), or 0 (they get 401)."""
        before, after = self.lockout.failed(client)
        if after and not before:  # one line when the lock starts, not one per guess
            log.warning("auth: %s locked out for %d s after %d wrong credentials (the last on %s)",
                        client, after, self.lockout.attempts, where)  # fmt: skip
        return before

    def sign_in(self, client: str, token: str) -> tuple[Identity | None, int]:
        """The login form: (identity, 0) for a right token; (None, seconds) for a wrong one while the
        client is locked out; (None, 0) for a wrong one (counted)."""
        identity = self.check_token(token)
        if identity is not None:
            return identity, 0
        return None, self.failed(client, "the sign-in form")

    def session_cookie(self, identity: Identity) -> str:
        fingerprint = self.fingerprint(identity.name)
        if fingerprint is None:
            raise ValueError(f"no credential for {identity.name!r}")
        return self.signer.issue(identity.name, fingerprint)


# ------------------------------------------------------------------------------------------ ASGI


async def send_json(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A small JSON response from a middleware (before the app has started one)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def relative_path(scope: Any) -> str:
    """The path inside the app the middleware wraps (Starlette keeps the mount prefix in ``path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


class AuthMiddleware:
    """Lets a request through with an :class:`Identity` in its scope, or answers 401, 303 to the login
    form (browsers on the pages), or 429 (a locked-out client's wrong credential).

    The service wraps everything in one; the pages app has its own too, so it is never served
    unprotected wherever it is mounted. The inner one finds the outer one's Authenticator and verdict
    in the scope and does not count a request twice.
    """

    def __init__(self, app: Any, make_auth: Any, public: Iterable[str] = (), pages_prefix: str = "") -> None:
        self.app, self._make_auth = app, make_auth
        self.public, self.pages_prefix = frozenset(public), pages_prefix
        self._auth: Authenticator | None = None

    def authenticator(self, scope: Any) -> Authenticator:
        found = scope.get(AUTH_SCOPE_KEY)
        if found is None:
            if self._auth is None:
                self._auth = self._make_auth() if callable(self._make_auth) else self._make_auth
            found = scope[AUTH_SCOPE_KEY] = self._auth
        return found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        auth = self.authenticator(scope)
        path = relative_path(scope)
        if IDENTITY_SCOPE_KEY in scope or path in self.public or not auth.enabled:
            return await self.app(scope, receive, send)
        identity, wrong = auth.authenticate(scope)
        if identity is not None:
            scope[IDENTITY_SCOPE_KEY] = identity
            return await self.app(scope, receive, send)
        where = (
            "the pages" if path.startswith(self.pages_prefix) else "the API"
        )  # no path: it may name a customer
        wait = auth.failed(auth.client(scope), where) if wrong else 0
        if wait:
            body = b'{"error": "too many wrong credentials from this client: retry later"}'
            return await send_json(send, 429, body, [(b"retry-after", str(wait).encode())])
        if path.startswith(self.pages_prefix) and "text/html" in header(scope, b"accept"):
            return await self._to_login(scope, send, path)
        await send_json(send, 401, b'{"error": "missing or wrong bearer token (Authorization: Bearer ...)"}',
                        [(b"www-authenticate", b'Bearer realm="churnml"')])  # fmt: skip

    async def _to_login(self, scope: Any, send: Any, path: str) -> None:
        from urllib.parse import quote

        query = scope.get("query_string", b"").decode("latin-1")
        wanted = scope.get("root_path", "") + path + (f"?{query}" if query else "")
        login = f"{scope.get('root_path', '')}{self.pages_prefix}/login?next={quote(wanted, safe='')}"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", login.encode("latin-1")), (b"content-length", b"0")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})
