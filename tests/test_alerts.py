"""Alerts (churnml.workspace.alerts, `churnml alerts`, /ui/alerts): crossings per owner, a CSV, a webhook
with retries (a local HTTP server on 127.0.0.1), and never the same crossing twice."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from churnml.cli import app
from churnml.config import Settings
from churnml.workspace.alerts import AlertDeliveryError, find_crossings, send_alerts
from churnml.workspace.pages import create_pages_app
from churnml.workspace.pages.queries import open_workspace
from tests.conftest import csm_store
from tests.test_pages import Tables, make_client

pytestmark = pytest.mark.usefixtures("csm_database")  # every test on SQLite and on PostgreSQL


def expected(tables: Tables, rise: float) -> set[str]:
    s = tables["scores"]
    rank = {"low": 0, "medium": 1, "high": 2}
    up = s["risk_tier"].map(rank) > s["previous_tier"].map(rank)
    rose = (s["probability"] - s["previous_probability"]) * 100 >= rise
    return set(s[up | rose]["customer_id"])


def crossings(rise: float = 10.0):  # noqa: ANN201
    settings = Settings.from_env()
    with open_workspace(settings.workspace_path, settings) as con:
        return find_crossings(con, rise)


def test_crossings_are_higher_tiers_or_a_rise_by_owner(workspace: Path, tables: Tables) -> None:
    found = crossings(10.0)
    assert {c.customer_id for c in found} == expected(tables, 10.0) and found
    assert {c.customer_id for c in crossings(25.0)} == expected(tables, 25.0) != expected(tables, 10.0)
    owners = [c.owner for c in found]
    assert owners == sorted(owners)  # grouped per owner
    moved = next(c for c in found if c.previous_tier != c.tier)
    assert f"moved {moved.previous_tier} → {moved.tier}" in moved.why


class _Hook(BaseHTTPRequestHandler):
    answers: list[int] = []
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.bodies.append(json.loads(body))
        self.send_response(_Hook.answers.pop(0) if _Hook.answers else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.answers, _Hook.bodies = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_the_webhook_is_retried_and_a_crossing_is_sent_once(workspace: Path, hook: str) -> None:
    with csm_store() as store:
        found = crossings()
        _Hook.answers = [503, 503, 200]  # down twice, then up
        sent = send_alerts(store, found, hook, retries=3, sleep=lambda s: None)
        assert len(sent) == len(found) and len(_Hook.bodies) == 3
        payload = _Hook.bodies[-1]
        assert payload["alerts"] == len(found) and sum(len(v) for v in payload["by_owner"].values()) == len(
            found
        )
        assert (
            send_alerts(store, found, hook, retries=3, sleep=lambda s: None) == [] and len(_Hook.bodies) == 3
        )


def test_an_undelivered_webhook_records_nothing(workspace: Path, hook: str) -> None:
    with csm_store() as store:
        found = crossings()
        _Hook.answers = [500, 500, 500]
        with pytest.raises(AlertDeliveryError, match="after 3 attempt"):
            send_alerts(store, found, hook, retries=2, sleep=lambda s: None)
        _Hook.answers = [400]  # refused: not retried
        with pytest.raises(AlertDeliveryError, match="after 1 attempt"):
            send_alerts(store, found, hook, retries=2, sleep=lambda s: None)
        assert len(send_alerts(store, found, hook, retries=0, sleep=lambda s: None)) == len(found)  # sent now


def test_the_command_writes_new_alerts_once_and_the_page_marks_them(workspace: Path, tables: Tables) -> None:
    runner = CliRunner()
    # a CSV that cannot be written marks nothing as sent: the next run still has every alert
    blocked = runner.invoke(app, ["alerts", "--min-rise", "10", "--out", str(workspace.parent)])
    assert blocked.exit_code == 2 and "nothing was marked as sent" in blocked.output, blocked.output
    first = runner.invoke(app, ["alerts", "--min-rise", "10", "--out", str(workspace.parent / "a.csv")])
    assert first.exit_code == 0, first.output
    content = (workspace.parent / "a.csv").read_bytes()
    assert content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))
    assert {r["customer_id"] for r in rows} == expected(tables, 10.0)
    assert all(r["probability"].endswith("%") for r in rows) and f"{len(rows)} new alert(s)" in first.output
    assert all(
        r["link"] == f"/ui/accounts/{quote(r['customer_id'], safe='')}" for r in rows
    )  # the account page on the service
    assert not any(r["owner"].startswith("=") for r in rows) and any(
        r["owner"].startswith("'=") for r in rows
    )
    again = runner.invoke(app, ["alerts", "--min-rise", "10", "--out", str(workspace.parent / "b.csv")])
    assert again.exit_code == 0 and "0 new alert(s)" in again.output
    assert (
        len((workspace.parent / "b.csv").read_text(encoding="utf-8-sig").splitlines()) == 1
    )  # the header only
    page = make_client(create_pages_app()).get("/ui/alerts?rise=10")
    assert page.status_code == 200 and page.text.count('<tr class="alert"') == len(rows)
    assert page.text.count('<span class="badge badge-sent">sent</span>') == len(rows)
    owner = next(r["owner"] for r in rows if r["owner"].startswith("Ana"))
    assert f"<h2>{owner} <span" in page.text  # per owner
    export = make_client(create_pages_app()).get("/ui/alerts.csv?rise=10")
    # the page takes what --min-rise takes: decimals too; a bad value is a 400 naming it
    decimal = make_client(create_pages_app()).get("/ui/alerts?rise=7.5")
    assert decimal.status_code == 200 and "at least 7.5 points" in decimal.text
    assert make_client(create_pages_app()).get("/ui/alerts?rise=nan").status_code == 400
    assert export.status_code == 200 and export.content.startswith(b"\xef\xbb\xbf")


def test_the_csv_links_to_the_pages_where_csms_open_them(
    workspace: Path, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNML_PAGES_URL", "https://churn.example.com/ui/")
    out = workspace.parent / "linked.csv"
    assert CliRunner().invoke(app, ["alerts", "--min-rise", "10", "--out", str(out)]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert rows and all(
        r["link"] == f"https://churn.example.com/ui/accounts/{quote(r['customer_id'], safe='')}" for r in rows
    )
    monkeypatch.setenv("CHURNML_PAGES_URL", "churn.example.com")
    bad = CliRunner().invoke(app, ["alerts"])
    assert bad.exit_code == 2 and "CHURNML_PAGES_URL" in bad.output


def test_no_workspace_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNML_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["alerts"])
    assert result.exit_code == 2 and "churnml score --spec" in result.output
