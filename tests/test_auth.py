"""churnml.service.auth, .sessions and .users on their own: lockout, client addresses, signed sessions,
hashed user tokens. (The same pieces against a real server: tests/reliability/test_abuse_auth.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from churnml.config import Settings
from churnml.service.auth import APP_TOKEN_NAME, Authenticator, Lockout
from churnml.service.sessions import SessionSigner, same_origin, session_key
from churnml.service.users import UserStore, token_digest


def scope(peer: str = "127.0.0.1", **headers: str) -> dict:
    return {"type": "http", "client": (peer, 5555),
            "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip


def make_auth(tmp_path: Path, **changes: object) -> Authenticator:
    settings = Settings(home=tmp_path, api_token="app-token-0123456789abcdef0123", **changes)  # type: ignore[arg-type]
    return Authenticator.from_settings(settings)


def test_lockout_counts_per_client_and_ends_after_the_window() -> None:
    lockout = Lockout(attempts=3, window=0.5)
    assert [lockout.failed("a") for _ in range(4)] == [(0, 0), (0, 0), (0, 1), (1, 1)]
    assert lockout.retry_after("a") == 1 and lockout.retry_after("b") == 0
    time.sleep(0.55)
    assert lockout.retry_after("a") == 0


def test_lockout_memory_is_bounded() -> None:
    lockout = Lockout(attempts=2, window=60, max_clients=100)
    for i in range(1000):
        for _ in range(50):
            lockout.failed(f"10.0.{i // 250}.{i % 250}")
    assert len(lockout._failures) == 100 and all(len(t) == 2 for t in lockout._failures.values())


def test_the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy(tmp_path: Path) -> None:
    plain = make_auth(tmp_path)
    assert plain.client(scope("127.0.0.1", x_forwarded_for="203.0.113.9")) == "127.0.0.1"
    proxied = make_auth(tmp_path, trusted_proxies=("10.0.0.0/8",))
    assert proxied.client(scope("10.1.2.3", x_forwarded_for="203.0.113.9")) == "203.0.113.9"
    assert (
        proxied.client(scope("10.1.2.3", x_forwarded_for="198.51.100.1, 203.0.113.9, 10.9.9.9"))
        == "203.0.113.9"
    )
    assert proxied.client(scope("10.1.2.3", x_forwarded_for="<script>, 203.0.113.9")) == "203.0.113.9"
    assert proxied.client(scope("10.1.2.3", x_forwarded_for="not an address")) == "10.1.2.3"
    assert proxied.client(scope("192.0.2.7", x_forwarded_for="203.0.113.9")) == "192.0.2.7"  # untrusted peer
    assert proxied.client({"type": "http", "client": None, "headers": []}) == "unknown"


def test_bearer_tokens_and_cookies_are_checked_and_wrong_ones_reported(tmp_path: Path) -> None:
    auth = make_auth(tmp_path)
    token = auth.users.add("ana")
    assert (
        auth.authenticate(scope(authorization="Bearer app-token-0123456789abcdef0123"))[0].name
        == APP_TOKEN_NAME
    )
    assert auth.authenticate(scope(authorization=f"Bearer {token}"))[0].name == "ana"
    assert auth.authenticate(scope(authorization="Bearer nope")) == (None, True)
    assert auth.authenticate(scope(authorization="Basic nope")) == (None, True)
    assert auth.authenticate(scope()) == (None, False)  # no credential: not a failed attempt
    cookie = auth.session_cookie(auth.check_token(token))
    identity, wrong = auth.authenticate(scope(cookie=f"churnml_session={cookie}"))
    assert identity.name == "ana" and identity.session is not None and not wrong
    assert auth.authenticate(scope(cookie="churnml_session=forged.value")) == (None, True)
    auth.users.add("ana", replace=True)  # a re-issued token ends the sessions made with the old one
    assert auth.authenticate(scope(cookie=f"churnml_session={cookie}")) == (None, False)


def test_sessions_are_signed_expire_and_can_be_revoked(tmp_path: Path) -> None:
    signer = SessionSigner(b"k" * 32, max_age=1, revoked_path=tmp_path / "revoked")
    value = signer.issue("ana", "user:abc")
    session, forged = signer.read(value)
    assert session.subject == "ana" and not forged
    body, mac = value.split(".")
    tampered = json.dumps(["x", "admin", "user:abc", 2**40]).encode()
    import base64

    forged_body = base64.urlsafe_b64encode(tampered).rstrip(b"=").decode()
    assert signer.read(f"{forged_body}.{mac}") == (None, True)
    assert SessionSigner(b"z" * 32, 60, tmp_path / "r2").read(value) == (None, True)  # another key
    other = SessionSigner(b"k" * 32, max_age=60, revoked_path=tmp_path / "revoked")  # another worker
    long_lived = other.issue("ana", "user:abc")
    signer.revoke(other.read(long_lived)[0])
    assert other.read(long_lived) == (None, False)  # signed out everywhere
    time.sleep(1.1)
    assert signer.read(value) == (None, False)  # expired
    assert signer.csrf_for(session) != other.csrf_for(signer.read(other.issue("ana", "x"))[0])


def test_the_session_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    key = session_key(settings)
    assert len(key) == 32 and session_key(settings) == key
    assert (tmp_path / ".churnml-session-key").stat().st_mode & 0o077 == 0
    assert session_key(Settings(home=tmp_path, session_secret="configured")) == b"configured"


def test_forms_from_other_sites_are_recognised() -> None:
    assert same_origin(scope(host="svc:3000"))  # no Origin or Referer: the CSRF token decides
    assert same_origin(scope(host="svc:3000", origin="http://svc:3000"))
    assert same_origin(scope(host="svc:3000", referer="http://svc:3000/ui/login?next=/ui/"))
    assert not same_origin(scope(host="svc:3000", origin="https://evil.example"))
    assert not same_origin(scope(host="svc:3000", origin="null"))
    assert not same_origin(scope(host="svc:3000", referer="http://svc:3000.evil.example/"))


def test_behind_a_trusted_proxy_the_origin_is_the_one_the_browser_used(tmp_path: Path) -> None:
    """A proxy that ends TLS and rewrites Host (nginx's default) must neither refuse every sign-in
    nor give the session cookie without its Secure flag; an untrusted client cannot claim either."""
    proxied = make_auth(tmp_path, trusted_proxies=("10.0.0.0/8",))
    behind = scope("10.1.2.3", host="churnml:3000", x_forwarded_proto="https", x_forwarded_host="churn.example.com",
                   origin="https://churn.example.com")  # fmt: skip
    assert proxied.public_origin(behind) == ("https", "churn.example.com")
    assert same_origin(behind, proxied.public_origin(behind)[1]) and not same_origin(behind)
    spoofed = scope("192.0.2.7", host="svc:3000", x_forwarded_proto="https", x_forwarded_host="evil.example",
                    origin="https://evil.example")  # fmt: skip
    assert proxied.public_origin(spoofed) == ("http", "svc:3000")
    assert not same_origin(spoofed, proxied.public_origin(spoofed)[1])


def test_user_tokens_are_stored_hashed_and_names_checked(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.json")
    token = store.add("ana@example.com")
    text = (tmp_path / "users.json").read_text()
    assert token not in text and token_digest(token) in text
    assert store.find(token).name == "ana@example.com" and store.find(token + "x") is None
    with pytest.raises(ValueError, match="exists"):
        store.add("ana@example.com")
    with pytest.raises(ValueError, match="user name"):
        store.add("../etc")
    new = store.add("ana@example.com", replace=True)
    assert store.find(token) is None and store.find(new).name == "ana@example.com"
    assert store.remove("ana@example.com") and not store.remove("ana@example.com")
    assert store.users() == []
    (tmp_path / "users.json").write_text("{broken")
    with pytest.raises(ValueError, match="unreadable"):
        store.users()
