"""Page sessions: a signed, expiring session id in an HttpOnly cookie, never the token itself.

A browser cannot send ``Authorization: Bearer``, so signing in on ``/ui/login`` exchanges a token for
a session cookie ``<payload>.<signature>``: the payload holds a random session id, who signed in, a
fingerprint of the credential used (re-issuing or removing it ends the session) and the expiry; the
signature is an HMAC with the service's session key. Sign-out revokes the id in a small file under
``CHURNML_HOME`` that every worker reads, so a copied cookie is dead everywhere.

Forms that change who is signed in (sign-in, sign-out) carry a CSRF token: on sign-in a random value
also set as a cookie (double submit), on sign-out an HMAC of the session id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from churnml.config import Settings

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "Session", "SessionSigner", "same_origin", "session_key"]

SESSION_COOKIE = "churnml_session"
CSRF_COOKIE = "churnml_csrf"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def session_key(settings: Settings) -> bytes:
    """``CHURNML_SESSION_SECRET``, else a random key kept in ``$CHURNML_HOME/.churnml-session-key``
    (made once, owner-only): every worker and restart signs with the same key."""
    if settings.session_secret:
        return settings.session_secret.encode()
    path = settings.home / ".churnml-session-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker is writing it
            key = path.read_text(encoding="ascii").strip()
            if len(key) >= 64:
                return bytes.fromhex(key)
            time.sleep(0.1)
        raise ValueError(f"session key file {path} is malformed; remove it to make a new one") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32))
    return session_key(settings)


@dataclass(frozen=True)
class Session:
    sid: str
    subject: str  # the user's name, or the application token's name
    fingerprint: str  # of the credential signed in with
    expires: int  # Unix time


class _Revoked:
    """Session ids signed out before they expired: a file of ``<expiry> <sid>`` lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        with self._lock:
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                lines = self.path.read_text(encoding="ascii", errors="replace").split()
                self._ids = {sid: int(exp) for exp, sid in zip(lines[::2], lines[1::2], strict=False)
                             if exp.isdigit()}  # fmt: skip
                self._stamp = (st.st_mtime_ns, st.st_size)
            return self._ids

    def __contains__(self, sid: str) -> bool:
        return sid in self._load()

    def add(self, sid: str, expires: int) -> None:
        now = int(time.time())
        kept = {s: e for s, e in self._load().items() if e > now} | {sid: expires}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{e} {s}\n" for s, e in kept.items()), encoding="ascii")
        os.replace(tmp, self.path)


class SessionSigner:
    """Issues and reads session cookies; makes and checks the forms' CSRF tokens."""

    def __init__(self, key: bytes, max_age: int, revoked_path: Path) -> None:
        self._key, self.max_age = key, max_age
        self._revoked = _Revoked(revoked_path)

    def _mac(self, purpose: str, data: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{data}".encode(), hashlib.sha256).digest())

    def issue(self, subject: str, fingerprint: str) -> str:
        """A new session's cookie value."""
        payload = [secrets.token_urlsafe(18), subject, fingerprint, int(time.time()) + self.max_age]
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac('session', body)}"

    def read(self, value: str) -> tuple[Session | None, bool]:
        """(session, forged): the session if the cookie is ours, unexpired and not signed out; ``forged``
        is True when the value was never signed by this key (a guess, counted as a failed attempt)."""
        body, _, mac = value.partition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return None, True
        try:
            sid, subject, fingerprint, expires = json.loads(_unb64(body))
            session = Session(str(sid), str(subject), str(fingerprint), int(expires))
        except (ValueError, TypeError):
            return None, True
        if session.expires <= time.time() or session.sid in self._revoked:
            return None, False  # ours, but over: sign in again
        return session, False

    def revoke(self, session: Session) -> None:
        self._revoked.add(session.sid, session.expires)

    def csrf_for(self, session: Session) -> str:
        """The sign-out form's token: bound to the session, so another site cannot know it."""
        return self._mac("csrf", session.sid)

    def csrf_unsigned_in(self) -> str:
        """The pages' forms' token when nobody signs in (no token configured): fixed per key, which
        another site cannot read, so it still stops a cross-site form."""
        return self._mac("csrf", "no sign-in")

    @staticmethod
    def new_csrf() -> str:
        return secrets.token_urlsafe(24)


def same_origin(scope: Any, host: str | None = None) -> bool:
    """False when the browser says the form came from another site (``Origin``, else ``Referer``) than
    ``host`` (by default the ``Host`` header; behind a proxy, the host the browser used).

    Without either header the CSRF token decides alone; ``Origin: null`` (sandboxed frames, some
    redirects) is refused.
    """
    headers = {k: v for k, v in scope.get("headers", []) if k in (b"origin", b"referer", b"host")}
    source = (headers.get(b"origin") or headers.get(b"referer") or b"").decode("latin-1").strip()
    if not source:
        return True
    if host is None:
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    netloc = urlsplit(source).netloc.lower() if source != "null" else ""
    return bool(netloc) and netloc == host
