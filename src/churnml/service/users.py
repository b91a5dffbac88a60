"""Named users with their own tokens, beside the service's application token (``CHURNML_API_TOKEN``).

``churnml users add NAME`` makes a token, prints it once and keeps only its SHA-256 in
``Settings.users_path`` (a JSON file, readable by its owner only). The tokens are 256 random bits,
so a fast hash is enough: nobody can try 2^256 guesses, and a slow key-derivation function would only
make every API request slower. The file is re-read when it changes, so a running service sees new and
removed users at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["User", "UserStore", "token_digest"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_PREFIX = "cml_"


def token_digest(token: str) -> str:
    """The stored form of a token (hex SHA-256)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class User:
    name: str
    digest: str  # token_digest of the user's token
    created: str


class UserStore:
    """The users file: read when it changes, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, User] = {}
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def users(self) -> list[User]:
        """Every user, re-reading the file if it changed since the last look."""
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                self._by_digest = {u.digest: u for u in self._read()} if stamp else {}
                self._stamp = stamp
            return list(self._by_digest.values())

    def _read(self) -> list[User]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [User(u["name"], u["token_sha256"], u.get("created", "")) for u in data["users"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"users file {self.path} is unreadable ({err}); fix or remove it") from None

    def find(self, token: str) -> User | None:
        """The user whose token this is, or None (compared in constant time)."""
        digest = token_digest(token)
        self.users()
        with self._lock:
            user = self._by_digest.get(digest)
        return user if user is not None and hmac.compare_digest(user.digest, digest) else None

    def get(self, name: str) -> User | None:
        return next((u for u in self.users() if u.name == name), None)

    def add(self, name: str, replace: bool = False) -> str:
        """Create (or, with ``replace``, re-issue) a user's token; returns the token, shown only now."""
        if not _NAME.match(name):
            raise ValueError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
        if self.get(name) is not None and not replace:
            raise ValueError(f"user {name!r} exists; `churnml users add {name} --replace` issues a new token")
        users = [u for u in self.users() if u.name != name]
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        self._write([*users, User(name, token_digest(token), created)])
        return token

    def remove(self, name: str) -> bool:
        users = self.users()
        kept = [u for u in users if u.name != name]
        if len(kept) == len(users):
            return False
        self._write(kept)
        return True

    def _write(self, users: list[User]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"users": [{"name": u.name, "token_sha256": u.digest, "created": u.created} for u in users]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)
