"""What CSMs record on the pages (activity log, assign, snooze) and the model health page, through
Starlette's TestClient on a workspace built here (tests/test_pages.py's tables); every test on the
default SQLite store and on a real PostgreSQL server (``CHURNML_DATABASE_URL``, tests/pg.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from churnml.config import Settings
from churnml.engine import write_tables
from churnml.service.users import UserStore
from churnml.workspace.pages import create_pages_app
from churnml.workspace.store import Activity
from tests.conftest import csm_store
from tests.test_pages import Tables, list_rows, make_client, sign_in

TODAY = dt.date.today()
pytestmark = pytest.mark.usefixtures("csm_database")  # every test on SQLite and on PostgreSQL


def logged(customer: str) -> list[Activity]:
    with csm_store() as store:
        return store.activities(customer)


def csrf_of(html: str) -> str:
    return re.search(r'id="activity-form">.*?name="csrf" value="([^"]*)"', html, re.S).group(1)


def first_high(tables: Tables) -> str:
    return tables["scores"][tables["scores"]["risk_tier"] == "high"]["customer_id"].iloc[0]


def log_play(c, customer: str, csrf: str, **fields: str):  # noqa: ANN001, ANN201
    data = {"action": "activity", "csrf": csrf, "play": "Play for login trend", "done_on": TODAY.isoformat(),
            "outcome": "reached", "note": "Admin agreed to a training", "next_step_on": "", **fields}  # fmt: skip
    return c.post(f"/ui/accounts/{customer}", data=data)


@pytest.fixture
def ana(workspace: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A client signed in as the named user 'ana' (through the login form)."""
    token = UserStore(Settings.from_env().users_path).add("ana")
    c = make_client(create_pages_app(), follow_redirects=False)
    assert sign_in(c, token).status_code == 303
    return c


def test_a_logged_play_shows_in_the_timeline_and_as_last_touch_with_its_author(ana, tables: Tables) -> None:
    customer = first_high(tables)
    page = ana.get(f"/ui/accounts/{customer}?from=tier%3Dhigh")
    assert "Nothing logged yet" in page.text
    assert '<option value="Play for login trend">Play for login trend (suggested)</option>' in page.text
    r = log_play(ana, customer, csrf_of(page.text), next_step_on=(TODAY + dt.timedelta(days=7)).isoformat(),
                 **{"from": "tier=high"})  # fmt: skip
    assert (
        r.status_code == 303 and r.headers["location"] == f"/ui/accounts/{customer}?from=tier%3Dhigh#activity"
    )
    again = ana.get(r.headers["location"]).text
    timeline = again[again.index('id="timeline"') :]
    assert "Play for login trend" in timeline and "(suggested)" in timeline and "reached" in timeline
    assert "by ana" in timeline and "Admin agreed to a training" in timeline
    assert f"next step {(TODAY + dt.timedelta(days=7)).isoformat()}" in timeline
    assert 'href="/ui/?tier=high" id="back-link"' in again  # the back link keeps the list's filters
    row = next(x for x in re.findall(r'<tr class="account[^"]*" data-customer="[^"]*">.*?</tr>',
                                     ana.get("/ui/?tier=high").text, re.S) if f'"{customer}"' in x)  # fmt: skip
    assert f'class="num last-touch" data-value="{TODAY.isoformat()}"' in row
    by_touch = list_rows(ana.get("/ui/?tier=high&sort=last_touch&dir=desc").text)
    assert by_touch[0]["customer"] == customer  # sortable by last touch
    # ascending, the accounts never contacted come first: they have waited longest
    oldest = list_rows(ana.get("/ui/?tier=high&sort=last_touch").text)
    assert customer not in [x["customer"] for x in oldest[:-1]]  # last if it is on this page at all


def test_another_play_and_a_correction_are_new_entries(ana, tables: Tables) -> None:
    customer = first_high(tables)
    csrf = csrf_of(ana.get(f"/ui/accounts/{customer}").text)
    assert log_play(ana, customer, csrf, play="__other__", play_other="Executive sponsor call",
                    outcome="no_answer").status_code == 303  # fmt: skip
    [first] = logged(customer)
    assert (first.play, first.play_suggested, first.outcome) == ("Executive sponsor call", False, "no_answer")
    fixed = log_play(ana, customer, csrf, play="__other__", play_other="Executive sponsor call", outcome="saved",
                     replaces=str(first.id))  # fmt: skip
    assert fixed.status_code == 303
    html = ana.get(f"/ui/accounts/{customer}").text
    assert f"corrected by #{first.id + 1}" in html and f"corrects #{first.id}" in html
    assert len(logged(customer)) == 2  # the first one stays


def test_forms_without_the_csrf_token_or_from_another_site_record_nothing(ana, tables: Tables) -> None:
    customer = first_high(tables)
    csrf = csrf_of(ana.get(f"/ui/accounts/{customer}").text)
    assert log_play(ana, customer, "").status_code == 403
    assert log_play(ana, customer, "x" + csrf[1:]).status_code == 403
    cross = ana.post(f"/ui/accounts/{customer}", headers={"origin": "https://evil.example"},
                     data={"action": "snooze", "csrf": csrf, "until": "2099-01-01", "reason": "x"})  # fmt: skip
    assert cross.status_code == 403
    with csm_store() as store:
        assert store.activities(customer) == [] and store.states() == {}


def test_bad_fields_are_refused_naming_them_and_nothing_is_recorded(ana, tables: Tables) -> None:
    customer = first_high(tables)
    csrf = csrf_of(ana.get(f"/ui/accounts/{customer}").text)
    future = (TODAY + dt.timedelta(days=30)).isoformat()
    for fields, name in (({"done_on": "yesterday"}, "done_on"), ({"done_on": future}, "done_on"),
                         ({"outcome": "won"}, "outcome"), ({"play": "__other__", "play_other": ""}, "play_other"),
                         ({"next_step_on": "2000-01-01"}, "next_step_on")):  # fmt: skip
        r = log_play(ana, customer, csrf, **fields)
        assert r.status_code == 400 and "Not recorded:" in r.text and name in r.text, fields
    assert logged(customer) == []
    # the refused form's page keeps the risk list's filters (they travel in the form, not the URL)
    r = log_play(ana, customer, csrf, outcome="won", **{"from": "tier=high&owner=Ana"})
    assert r.status_code == 400 and 'href="/ui/?tier=high&amp;owner=Ana" id="back-link"' in r.text
    assert r.text.count('name="from" value="tier=high&amp;owner=Ana"') >= 3


def test_without_sign_in_entries_say_so_and_still_need_the_form_token(
    workspace: Path, tables: Tables
) -> None:
    c = make_client(create_pages_app(), follow_redirects=False)
    customer = first_high(tables)
    assert log_play(c, customer, "").status_code == 403
    assert log_play(c, customer, csrf_of(c.get(f"/ui/accounts/{customer}").text)).status_code == 303
    assert logged(customer)[0].author == "(no sign-in)"


def test_a_snoozed_account_leaves_the_call_list_until_woken(ana, tables: Tables) -> None:
    listed = list_rows(ana.get("/ui/?capacity=5").text)
    top = listed[0]["customer"]
    csrf = csrf_of(ana.get(f"/ui/accounts/{top}").text)
    until = (TODAY + dt.timedelta(days=14)).isoformat()
    r = ana.post(
        f"/ui/accounts/{top}",
        data={"action": "snooze", "csrf": csrf, "until": until, "reason": "renewal call booked"},
    )
    assert r.status_code == 303
    now = list_rows(ana.get("/ui/?capacity=5").text)
    called = [x["customer"] for x in now if "call-list" in x["class"]]
    assert top not in called and len(called) == 5 and called[:4] == [x["customer"] for x in listed[1:5]]
    assert top in [x["customer"] for x in now]  # still listed, marked
    assert f"snoozed until {until}" in ana.get("/ui/?capacity=5").text
    # the date picker offers only what the store accepts: from tomorrow
    tomorrow = (TODAY + dt.timedelta(days=1)).isoformat()
    assert f'name="until" min="{tomorrow}"' in ana.get(f"/ui/accounts/{top}").text
    assert (
        ana.post(f"/ui/accounts/{top}", data={"action": "snooze", "csrf": csrf, "wake": "1"}).status_code
        == 303
    )
    assert top in [
        x["customer"] for x in list_rows(ana.get("/ui/?capacity=5").text) if "call-list" in x["class"]
    ]


def test_an_assigned_owner_is_the_owner_everywhere(ana, tables: Tables) -> None:
    customer = first_high(tables)
    csrf = csrf_of(ana.get(f"/ui/accounts/{customer}").text)
    assert (
        ana.post(
            f"/ui/accounts/{customer}", data={"action": "assign", "csrf": csrf, "owner": "Zoe New"}
        ).status_code
        == 303
    )
    mine = list_rows(ana.get("/ui/?owner=zoe%20new").text)
    assert [x["customer"] for x in mine] == [customer]
    assert "assigned here; the data says" in ana.get(f"/ui/accounts/{customer}").text


def test_the_account_page_gives_the_context_to_check_a_reason_against(ana, tables: Tables) -> None:
    s = tables["scores"].iloc[0]
    html = ana.get(f"/ui/accounts/{s['customer_id']}").text
    cards = re.sub(r"<[^>]+>", " ", html[html.index('id="account-context"') : html.index("</div>\n<p")])
    cards = re.sub(r"\s+", " ", cards)
    assert s["name"] in html and f"{s['mrr']:,.0f} · {s['mrr'] * 12:,.0f}" in cards  # MRR and ARR
    assert (
        f"{s['seats_used']:,.0f} of {s['seats']:,.0f}" in cards
        and s["renewal_date"].strftime("%Y-%m-%d") in cards
    )
    assert (
        s["plan"] in cards
        and s["csm_owner"] in cards
        and ("year" in cards or "month" in cards or "days" in cards)
    )
    assert "churn probability × MRR × 1.97 months (the model&#39;s 60-day horizon) in EUR" in html
    usage = html[html.index('id="usage-table"') :]
    assert re.search(r"<th scope=\"row\">login</th>(<td class=\"num\">\d+</td>){6}", usage)
    assert (
        '<td class="num">0</td>' in usage.split("support_ticket")[1].split("</tr>")[0]
    )  # a month without events


def _monitoring(path: Path, retrain: bool) -> None:
    key = {"model_version": "3", "as_of": pd.Timestamp("2025-07-01")}
    frames = {
        "monitor_runs": pd.DataFrame([{**key, "run_at": pd.Timestamp("2025-07-02"), "rows": 1200, "retrain": retrain,
                                       "reasons": json.dumps(["ROC-AUC realised 0.61 below its floor 0.65"] if retrain else []),
                                       "mlflow_run_id": "abc123"}]),
        "estimates": pd.DataFrame([{**key, "metric": m, "value": v, "low": v - 0.03, "high": v + 0.03}
                                   for m, v in (("roc_auc", 0.81), ("pr_auc", 0.42))]
                                  # a run at 2025-04-01 estimated then, for the accounts it scored
                                  + [{**key, "as_of": pd.Timestamp("2025-04-01"), "metric": "roc_auc", "value": 0.834,
                                      "low": 0.8, "high": 0.86}]),
        "realised": pd.DataFrame([{"date": pd.Timestamp(d), "metric": m, "estimated": 0.8, "low": 0.77, "high": 0.83,
                                   "realised": r, "rows": 900, "churners": 60, "model_version": "3",
                                   "measured_at": pd.Timestamp("2025-07-02")}
                                  for d, r in (("2025-04-01", 0.79), ("2025-05-01", 0.61)) for m in ("roc_auc", "pr_auc")]),
        "drift": pd.DataFrame([{**key, "column": "login_count_30d", "kind": "numeric", "statistic": "psi", "value": 0.31,
                                "threshold": 0.1, "drifted": True, "alarm": True, "missing_before": 0.0, "missing_now": 0.0,
                                "missing_drifted": False, "new_levels": "[]", "note": ""}]),
    }  # fmt: skip
    write_tables(path, frames)


def test_model_health_says_how_to_start_then_shows_the_latest_verdict(ana) -> None:
    empty = ana.get("/ui/model")
    assert (
        empty.status_code == 200 and "No monitoring run yet: run <code>churnml monitor --spec" in empty.text
    )
    _monitoring(Settings.from_env().monitoring_path, retrain=True)
    html = ana.get("/ui/model").text
    verdict = html[html.index('id="verdict"') :]
    assert "Retraining recommended" in verdict and "ROC-AUC realised 0.61 below its floor 0.65" in verdict
    assert '<th scope="row">login_count_30d</th>' in html and "<strong>drift</strong>" in html
    table = html[html.index('id="roc_auc-table"') :]
    assert "2025-05-01" in table and "0.610" in table and "0.770–0.830" in table
    april, may = (
        table[table.index(f'<th scope="row">{d}</th>') :].split("</tr>")[0]
        for d in ("2025-04-01", "2025-05-01")
    )
    # beside the realised figure: what was estimated then (stored by that date's run), and where none ran
    assert "0.834" in april and "0.790" in april and "not monitored then" in may and "0.610" in may
    assert "2025-07-01" in table and "labels not in yet" in table  # the latest estimate, before its labels
    assert (
        'aria-label="ROC-AUC: estimated against realised"' in html
        and 'aria-describedby="roc_auc-table"' in html
    )
    assert 'href="/ui/model"' in ana.get("/ui/").text  # in the header
