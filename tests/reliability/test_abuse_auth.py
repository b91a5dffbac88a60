"""Issue 19, authentication and hygiene: each test replays one attack of the red-team pass against a
real `churnml serve` (lockout, X-Forwarded-For, /metrics, WebSocket, CSRF, strict JSON) and checks
it fails; plus named users end to end.

``guarded`` trusts no proxy; ``proxied`` trusts 127.0.0.1 as its reverse proxy, so a test can pose
as many clients through X-Forwarded-For. Both have a home of their own (users, session key) and read
the champion and the scores of ``champion_home``.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RISK_ENV, Server, home_store, service_env, start_server, stop_server
from tests.reliability.attacks import websocket_upgrade
from tests.test_serving import feature_record

TOKEN = "guard-token-8d41c0b7e29f5a36"
CHURNML = str(Path(sys.executable).parent / "churnml")


def _start(champion_home: Path, home: Path, **env: str) -> Server:
    """A service with a home of its own (users, session key, BentoML store) serving the champion and its scores."""
    (home / "reports").symlink_to(champion_home / "reports")
    # its own BentoML store (see own_bentoml_home), the champion imported from champion_home's registry
    server = start_server(home, token=TOKEN, MLFLOW_TRACKING_URI=home_store(champion_home), **env, **RISK_ENV)
    assert server.process.poll() is None, server.log()[-3000:]
    return server


@pytest.fixture(scope="module")
def guarded(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _start(champion_home, tmp_path_factory.mktemp("guarded"), CHURNML_METRICS_MAX_BYTES="32768")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def proxied(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _start(champion_home, tmp_path_factory.mktemp("proxied"), CHURNML_TRUSTED_PROXIES="127.0.0.1")
    yield server
    stop_server(server)


def _as(client: str, token: str | None = None, **headers: str) -> dict[str, str]:
    return {"X-Forwarded-For": client, **({"Authorization": f"Bearer {token}"} if token else {}), **headers}


def sign_in(server: Server, token: str, client: httpx.Client | None = None, **headers: str) -> httpx.Response:
    """The sign-in form as a browser posts it: load it (CSRF cookie and field), then submit."""
    if client is None:
        with httpx.Client(timeout=30) as fresh:
            return sign_in(server, token, fresh, **headers)
    form = client.get(server.url + "/ui/login?next=/ui/", headers=headers).text
    csrf = re.search(r'name="csrf" value="([^"]*)"', form)
    data = {"token": token, "next": "/ui/", "csrf": csrf.group(1) if csrf else ""}
    return client.post(server.url + "/ui/login", data=data, headers=headers)


# ------------------------------------------------------------------------------------------ row 3


def test_wrong_credentials_are_locked_out_on_every_route_but_never_the_right_token(proxied: Server) -> None:
    """Row 3: 6,582 wrong bearer tokens to /ui/overview in 5 s, never a 429 (the limit was on /ui/login only)."""
    url, client = proxied.url, "198.51.100.3"
    with httpx.Client(timeout=30) as http:
        for _ in range(5):
            assert http.get(url + "/ui/overview", headers=_as(client, "guess")).status_code == 401
        locked = http.get(url + "/ui/overview", headers=_as(client, "guess"))
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert http.post(url + "/predict", json={}, headers=_as(client, "guess")).status_code == 429
        forged = {"Cookie": "churnml_session=forged.cookie"}
        assert http.get(url + "/ui/", headers=_as(client, **forged)).status_code == 429
        assert http.post(url + "/model", headers=_as(client, TOKEN)).status_code == 200  # never locked out
        assert (
            http.get(url + "/ui/overview", headers=_as("198.51.100.4", "guess")).status_code == 401
        )  # per client
        other = "198.51.100.5"  # forged session cookies count as wrong credentials too
        for _ in range(5):
            assert http.get(url + "/ui/", headers=_as(other, **forged)).status_code == 401
        assert http.get(url + "/ui/", headers=_as(other, "guess")).status_code == 429
    assert proxied.log().count("locked out") == 2  # one line per lockout, not one per guess


# ------------------------------------------------------------------------------------------ row 4


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(guarded: Server) -> None:
    """Row 4: a new X-Forwarded-For per attempt was never locked out, the right token from a "new"
    address signed in while the real one was locked, the header was logged as sent, and a locked
    address got 429 even with the right token."""
    for i in range(5):
        assert sign_in(guarded, "guess", **{"X-Forwarded-For": f"203.0.113.{i}"}).status_code == 401
    spoofed = sign_in(guarded, "guess", **{"X-Forwarded-For": "203.0.113.99"})
    assert spoofed.status_code == 429  # the same peer, whatever it claims
    assert sign_in(guarded, TOKEN, **{"X-Forwarded-For": "203.0.113.100"}).status_code == 303
    assert sign_in(guarded, TOKEN).status_code == 303  # the locked address, with the right token
    assert "203.0.113." not in guarded.log()


def test_a_trusted_proxy_forwards_the_client_address(proxied: Server) -> None:
    url = proxied.url
    with httpx.Client(timeout=30) as http:
        for _ in range(6):
            http.get(url + "/ui/", headers=_as("198.51.100.20", "guess"))
        assert http.get(url + "/ui/", headers=_as("198.51.100.20", "guess")).status_code == 429
        assert http.get(url + "/ui/", headers=_as("198.51.100.21", "guess")).status_code == 401
        chain = "198.51.100.20, 127.0.0.1"  # our proxy appended itself: the client is the one before
        assert http.get(url + "/ui/", headers=_as(chain, "guess")).status_code == 429
        assert http.get(url + "/ui/", headers=_as("not-an-address", "guess")).status_code == 401  # the peer


# ------------------------------------------------------------------------------------------ row 5


def test_metrics_label_route_templates_and_stay_small(guarded: Server) -> None:
    """Row 5: 300 unauthenticated requests to unique 2 KB paths grew the open /metrics from 385 KB to
    13.5 MB, and it showed which account pages were opened."""
    url = guarded.url
    with httpx.Client(timeout=30) as http:
        for i in range(300):
            assert http.get(f"{url}/{i:04d}{'a' * 2048}").status_code == 401
        for i in range(50):
            http.get(f"{url}/ui/accounts/SECRET-ACCOUNT-{i}", headers={"Authorization": f"Bearer {TOKEN}"})
            http.request(f"X{i}", f"{url}/predict")
        first = http.get(url + "/metrics").text
        for i in range(300, 600):
            http.get(f"{url}/{i:04d}{'b' * 2048}")
        metrics = http.get(url + "/metrics").text
    assert len(metrics.encode()) <= 32768 and len(metrics) - len(first) < 2048, (len(first), len(metrics))
    assert "aaaa" not in metrics and "SECRET-ACCOUNT" not in metrics
    assert 'route="unmatched"' in metrics and 'route="/ui/accounts/{customer_id}"' in metrics
    assert 'method="OTHER"' in metrics


# ------------------------------------------------------------------------------------------ row 9


def test_websocket_upgrades_are_refused_without_a_traceback(guarded: Server) -> None:
    """Row 9: a WebSocket upgrade to /predict or /ui/ got 500 and ~36 lines of traceback each."""
    for path in ("/predict", "/ui/", "/readyz"):
        assert websocket_upgrade(guarded.url, path).status == 403, path
    assert "Traceback" not in guarded.log()


# ------------------------------------------------------------------------------------------ row 10


def test_sign_in_refuses_other_origins_and_the_cookie_is_never_the_token(guarded: Server) -> None:
    """Row 10: POST /ui/login with Origin: https://evil.example got 303 and a cookie holding the token."""
    url = guarded.url
    attack = httpx.post(url + "/ui/login", data={"token": TOKEN, "next": "/ui/"}, timeout=30,
                        headers={"Origin": "https://evil.example"})  # fmt: skip
    assert attack.status_code == 403 and "churnml_session" not in attack.headers.get("set-cookie", "")
    assert (
        sign_in(guarded, TOKEN, Origin="https://evil.example").status_code == 403
    )  # even with the form's token
    with httpx.Client(timeout=30) as browser:
        assert sign_in(guarded, TOKEN, browser, Origin=url).status_code == 303
        session = browser.cookies["churnml_session"]
        assert TOKEN not in session and "." in session
        page = browser.get(url + "/ui/")
        assert page.status_code == 200 and "Signed in as application token" in page.text
        assert browser.post(url + "/ui/logout", headers={"Origin": url}).status_code == 403  # no CSRF token
        assert browser.get(url + "/ui/").status_code == 200  # still signed in
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert (
            browser.post(url + "/ui/logout", data={"csrf": csrf}, headers={"Origin": url}).status_code == 303
        )
    assert httpx.get(url + "/ui/", cookies={"churnml_session": session}, timeout=30).status_code == 401


# ------------------------------------------------------------------------------------------ row 11


def test_strict_json_and_no_framework_banner(served: Server, trained) -> None:
    """Row 11: the server header named BentoML; duplicate keys took the last; as_of 0 was 1970-01-01;
    true was a number; a body without Content-Type was read as JSON."""
    table, _, result = trained
    names = result.model.feature_names
    record = feature_record(table, 0, names)
    number = next(n for n in names if n.endswith("_count_30d"))
    for r in (served.get("/readyz"), served.get("/ui/login"), served.post("/model", {}),
              served.post("/predict", {"customers": []})):  # fmt: skip
        assert "server" not in r.headers, r.headers
    assert "BentoML" not in json.dumps(served.get("/docs.json").json()["info"])

    def refused(body: bytes | dict, field: str, route: str = "/predict") -> None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = served.post(route, content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400, (field, r.text[:300])
        assert field in [str(p) for d in r.json()["detail"] for p in d["loc"]], (field, r.json())

    refused(b'{"customers": [{"customer_id": "a", "customer_id": "b", "events": []}]}', "customer_id")
    refused({"customers": [{"customer_id": "a", "as_of": 0, "events": []}]}, "as_of")
    refused(
        {"customers": [{"customer_id": "a", "events": [{"timestamp": 0, "event_type": "login"}]}]},
        "timestamp",
    )
    refused({"customers": [{"customer_id": "a", "features": record | {number: True}}]}, number)
    refused({"customers": [{"customer_id": "a", "events": [
        {"timestamp": "2025-01-01T00:00:00Z", "event_type": "login", "value": True}]}]}, "value")  # fmt: skip
    refused({"customers": [{"customer_id": "a", "features": record}], "top_k": True}, "top_k", "/explain")
    bare = served.post(
        "/predict", content=json.dumps({"customers": [{"customer_id": "a", "events": []}]}).encode()
    )
    assert bare.status_code == 415


# ------------------------------------------------------------------------------------------ named users


def test_named_users_have_their_own_tokens_stored_hashed(proxied: Server) -> None:
    home = Path(proxied.log_path).parent
    env = service_env(home)
    me = {"X-Forwarded-For": "198.51.100.77"}  # a client of its own: other tests lock theirs out

    def users(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CHURNML, "users", *args], env=env, capture_output=True, text=True, timeout=120)

    added = users("add", "ana")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    stored = (home / "users.json").read_text()
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored
    assert (home / "users.json").stat().st_mode & 0o077 == 0  # owner only
    assert users("add", "ana").returncode == 2  # exists: --replace issues a new token
    # the running service sees the new user at once, for the API and the pages
    user = {**me, "Authorization": f"Bearer {token}"}
    assert httpx.post(proxied.url + "/model", headers=user, timeout=30).status_code == 200
    with httpx.Client(timeout=30, headers=me) as browser:
        assert sign_in(proxied, token, browser).status_code == 303
        assert "Signed in as ana" in browser.get(proxied.url + "/ui/").text
        assert users("list").stdout.split()[0] == "ana"
        assert users("remove", "ana").returncode == 0  # token and sessions end at once
        assert browser.get(proxied.url + "/ui/", headers={"accept": "application/json"}).status_code == 401
    assert httpx.post(proxied.url + "/model", headers=user, timeout=30).status_code == 401
