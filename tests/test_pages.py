"""The CSM pages (churnml.workspace.pages) on a small workspace built here, through Starlette's TestClient.

The app is mounted at /ui as in the service, so links and cookies are checked with the mount prefix.
"""

from __future__ import annotations

import csv
import html as html_module
import io
import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from churnml.config import Settings
from churnml.engine import write_tables
from churnml.service.sessions import CSRF_COOKIE, SESSION_COOKIE
from churnml.workspace.pages import PUBLIC_PATHS, charts, create_pages_app, open_workspace

if TYPE_CHECKING:
    from starlette.testclient import TestClient
    from starlette.types import ASGIApp

TOKEN = "test-token"
XSS_ID = "<script>alert('id')</script>"
XSS_SENTENCE = "Support said <script>alert('reason')</script> & left"
AS_OF = pd.Timestamp("2025-07-01")
OWNERS = ["Ana Souza", "Ben Carter", "Isla Brown", "=cmd|' /C calc'!A0"]  # the last one tries CSV injection
SEGMENTS = ["SMB", "Mid-Market", "Enterprise"]


NAMES = ["Acme Analytics", "Blue Labs", "Cedar Foods", "Delta Média"]  # one name with a non-ASCII letter


def tiers_of(probability: np.ndarray) -> np.ndarray:
    return np.where(probability >= 0.5, "high", np.where(probability >= 0.2, "medium", "low"))


def workspace_tables(n: int = 250, seed: int = 7) -> dict[str, pd.DataFrame]:
    """Every table `churnml score` writes, small and synthetic, with one hostile customer id and sentence."""
    rng = np.random.default_rng(seed)
    ids = [f"C{i:04d}" for i in range(n - 1)] + [XSS_ID]
    probability = rng.uniform(0.01, 0.9, n)
    mrr = rng.choice([50.0, 300.0, 1200.0, 8000.0], n)
    tier = tiers_of(probability)
    scores = pd.DataFrame({
        "customer_id": ids, "as_of": AS_OF, "probability": probability,
        "health_score": np.round(100 * (1 - probability)).astype(int), "risk_tier": tier, "mrr": mrr,
        "revenue_at_risk": probability * mrr, "plan": rng.choice(["starter", "team"], n),
        "segment": [SEGMENTS[i % 3] for i in range(n)], "csm_owner": [OWNERS[i % 4] for i in range(n)],
        "top_reason": [XSS_SENTENCE if c == XSS_ID else f"Logins fell by {i % 9 + 1}0% in 30 days" for i, c in enumerate(ids)],
        "top_play": "Training and check-in", "name": [f"{NAMES[i % len(NAMES)]} {i}" for i in range(n)],
        "seats": 10.0, "seats_used": rng.integers(0, 11, n).astype(float), "tenure_days": rng.uniform(20, 900, n),
        "renewal_date": AS_OF + pd.to_timedelta(rng.integers(1, 365, n), unit="D"),
        "previous_date": pd.Timestamp("2025-06-01"), "previous_probability": probability / 1.5,
        "previous_tier": tiers_of(probability / 1.5),
    })  # fmt: skip
    scores["probability_change"] = scores["probability"] - scores["previous_probability"]
    scores = scores.sort_values(
        ["revenue_at_risk", "customer_id"], ascending=[False, True], ignore_index=True
    )
    scores["rank"] = np.arange(1, n + 1)
    features = [("login_count_trend_ratio", "login trend", "usage"),
                ("support_ticket_count_30d", "support tickets in 30 days", "support"),
                ("nps_response_score_last", "latest NPS", "feedback"),
                ("seats_used_ratio", "share of seats in use", "usage")]  # fmt: skip
    reasons, changes = [], []
    for c in ids:
        ranked = zip(features[:3], [0.8, 0.3, 0.1], strict=True)
        for rank, ((feature, label, group), contribution) in enumerate(ranked, 1):
            reasons.append({
                "customer_id": c, "as_of": AS_OF, "kind": "problem", "rank": rank, "signal": group,
                "feature": feature, "label": label,
                "sentence": XSS_SENTENCE if c == XSS_ID and rank == 1 else f"Sentence {rank} about {label} for {c}",
                "value": "3", "contribution": contribution, "direction": "raises risk", "strength": "moderate",
                "actionable": True, "group": group, "values": json.dumps({"value": 3}),
                "comparison": f"lower than {90 - rank}% of accounts that stayed", "percentile": 10.0 + rank,
                "play": f"Play for {label}", "play_action": f"Do something about {label}",
                "play_condition": None, "play_facts": "{}",
            })  # fmt: skip
        for rank, contribution in enumerate([-0.5, -0.2], 1):
            reasons.append({
                "customer_id": c, "as_of": AS_OF, "kind": "protective", "rank": rank, "signal": f"safe{rank}",
                "feature": f"safe_{rank}", "label": f"safe fact {rank}", "sentence": f"Protective fact {rank} of {c}",
                "value": "1", "contribution": contribution, "direction": "lowers risk", "strength": "moderate",
                "actionable": True, "group": "usage", "values": "{}", "comparison": "typical of accounts that stayed",
                "percentile": 50.0, "play": None, "play_action": None, "play_condition": None, "play_facts": "{}",
            })  # fmt: skip
        reasons.append({
            "customer_id": c, "as_of": AS_OF, "kind": "context", "rank": 1, "signal": "attr_industry",
            "feature": "attr_industry", "label": "industry", "sentence": "Industry: finance", "value": "finance",
            "contribution": 0.05, "direction": "raises risk", "strength": "slight", "actionable": False,
            "group": "context", "values": "{}", "comparison": "13% of accounts that stayed share it", "percentile": None,
            "play": None, "play_action": None, "play_condition": None, "play_facts": "{}",
        })  # fmt: skip
        for status, (feature, label, group), text in (
            ("still", features[0], "Logins in the last 30 days: 32 → 12"),
            ("new", features[1], "Support tickets in the last 30 days: 0 → 4"),
            ("gone", features[3], "Share of seats in use: 0.2 → 0.6"),
        ):
            changes.append({"customer_id": c, "before_date": pd.Timestamp("2025-06-01"), "now_date": AS_OF,
                            "status": status, "signal": group, "feature": feature, "label": label, "before": 1.0,
                            "now": 2.0, "text": text, "sentence": "s"})  # fmt: skip
    dates = pd.to_datetime(["2025-05-01", "2025-06-01", "2025-07-01"])
    history = []
    for c, p in zip(scores["customer_id"], scores["probability"], strict=True):
        tops = [["usage", "feedback"], ["usage", "feedback"], ["usage", "support", "feedback"]]
        for date, prob, top in zip(dates, [p / 2, p / 1.5, p], tops, strict=True):
            history.append({"customer_id": c, "observation_date": date, "probability": prob, "risk_tier": "low",
                            "revenue_at_risk": prob * 10, "reasons": json.dumps(top)})  # fmt: skip
    months = pd.date_range("2025-01-01", periods=6, freq="MS")
    monthly = pd.DataFrame({
        "month": months, "active": 200, "churned": [4, 5, 6, 3, 4, 5], "churn_rate": [0.02, 0.025, 0.03, 0.015, 0.02, 0.025],
        "nrr": [1.01, 0.99, 0.97, 1.02, 1.0, 0.98], "nps": [12.0, 15.0, np.nan, 9.0, 11.0, 20.0],
        "nps_responses": [10, 12, 0, 8, 9, 14],
    })  # fmt: skip
    monthly["retention_rate"] = 1 - monthly["churn_rate"]
    cohorts = pd.DataFrame([
        {"cohort": m, "months_since": k, "active": 100 - 5 * k, "size": 100, "retention": 1 - 0.05 * k}
        for i, m in enumerate(months[:4]) for k in range(6 - i)
    ])  # fmt: skip
    segments = pd.DataFrame({
        "segment": SEGMENTS, "accounts": [84, 83, 83], "mrr": [1e4, 5e4, 3e5], "avg_mrr": [120.0, 600.0, 3600.0],
        "revenue_at_risk": [3e3, 9e3, 4e4], "high_risk": [5, 6, 7], "avg_probability": [0.3, 0.25, 0.2],
        "monthly_churn_rate": [0.04, 0.03, 0.02], "cltv": [3000.0, 20000.0, 180000.0],
    })  # fmt: skip
    meta = pd.DataFrame([{"as_of": AS_OF, "generated_at": pd.Timestamp("2025-07-02 06:00"),
                          "model_uri": "models:/churn@champion", "model_version": "3", "horizon_days": "60",
                          "currency": "EUR", "risk_high": "0.5", "risk_medium": "0.2"}])  # fmt: skip
    usage = pd.DataFrame([
        {"customer_id": c, "month": m.date(), "event_type": t, "events": 40 - 5 * k if t == "login" else 3}
        for c in ids[:20] for k, m in enumerate(pd.date_range("2025-01-01", periods=6, freq="MS"))
        for t in ("login", "support_ticket") if not (t == "support_ticket" and k == 2)
    ])  # fmt: skip
    window = pd.DataFrame([{"data_end": pd.Timestamp("2025-06-30"), "labelled_until": pd.Timestamp("2025-06-01"),
                            "margin_days": 61}])  # fmt: skip
    monthly["nrr_12m"] = [np.nan, np.nan, np.nan, 1.04, 0.97, 1.01]
    return {"scores": scores, "reasons": pd.DataFrame(reasons), "score_history": pd.DataFrame(history),
            "reason_changes": pd.DataFrame(changes),
            "retention_monthly": monthly, "cohort_retention": cohorts, "segment_summary": segments, "meta": meta,
            "usage_monthly": usage, "retention_window": window}  # fmt: skip


def write_workspace(path: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write the tables to a DuckDB file the way `churnml score` does: a temp file, then os.replace."""
    return write_tables(path, tables)


def make_client(app: ASGIApp, follow_redirects: bool = True) -> TestClient:
    """Starlette's TestClient, imported quietly: it warns (an error here) that it prefers httpx2 over httpx."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.applications import Starlette
        from starlette.routing import Mount
        from starlette.testclient import TestClient
    return TestClient(Starlette(routes=[Mount("/ui", app)]), follow_redirects=follow_redirects)


Tables = dict[str, pd.DataFrame]


@pytest.fixture
def client(workspace: Path) -> TestClient:
    return make_client(create_pages_app())


Rows = list[dict[str, str]]


def list_rows(html: str) -> Rows:
    """The risk list's rows as the page shows them (customer, revenue, tier, class)."""
    rows = []
    for match in re.finditer(r'<tr class="([^"]*)" data-customer="([^"]*)">(.*?)</tr>', html, re.S):
        cls, customer, body = match.groups()
        revenue = re.search(r'class="num revenue" data-value="([^"]*)"', body)
        tier = re.search(r'class="tier tier-([a-z]+)"', body)
        rows.append(
            {
                "class": cls,
                "customer": html_module.unescape(customer),
                "revenue": revenue.group(1),
                "tier": tier.group(1),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------ risk list


def test_list_is_sorted_by_revenue_at_risk_and_paginated(client: TestClient, tables: Tables) -> None:
    r = client.get("/ui/")
    assert r.status_code == 200
    rows = list_rows(r.text)
    assert len(rows) == 100  # one page, not 250 rows
    revenue = [float(x["revenue"]) for x in rows]
    assert revenue == sorted(revenue, reverse=True)
    assert revenue[0] == pytest.approx(tables["scores"]["revenue_at_risk"].max())
    assert "accounts 1–100 of 250" in r.text
    last = list_rows(client.get("/ui/?page=3").text)
    assert len(last) == 50 and float(last[0]["revenue"]) <= revenue[-1]
    assert "accounts 201–250 of 250" in client.get("/ui/?page=99").text  # past the end: the last page


def test_filters_and_search_narrow_the_list(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"]
    high = list_rows(client.get("/ui/?tier=high").text)
    assert {x["tier"] for x in high} == {"high"}
    assert len(high) == min(100, int((scores["risk_tier"] == "high").sum()))

    r = client.get("/ui/", params={"segment": "Enterprise", "owner": "Ben Carter", "tier": "medium"})
    expected = scores[(scores["segment"] == "Enterprise") & (scores["csm_owner"] == "Ben Carter")
                      & (scores["risk_tier"] == "medium")]  # fmt: skip
    assert [x["customer"] for x in list_rows(r.text)] == list(expected["customer_id"])
    assert '<option value="Enterprise" selected>' in r.text  # the form shows the filters in force

    found = list_rows(client.get("/ui/?q=c002").text)  # any case, substring
    assert sorted(x["customer"] for x in found) == sorted(c for c in scores["customer_id"] if "C002" in c)
    assert "No account matches" in client.get("/ui/?q=nobody").text


def test_capacity_highlights_the_best_value_accounts(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"]
    r = client.get("/ui/?capacity=7&min_tier=any")
    rows = list_rows(r.text)
    called = [x for x in rows if "call-list" in x["class"]]
    assert [x["customer"] for x in called] == [x["customer"] for x in rows[:7]]
    assert (
        r.text.count('<span class="badge badge-call">call</span>') == 7 + 1
    )  # marked in text too (+ the summary)
    covered, total = scores["revenue_at_risk"].nlargest(7).sum(), scores["revenue_at_risk"].sum()
    summary = re.sub(r"\s+", " ", re.search(r'id="capacity-summary">(.*?)</p>', r.text, re.S).group(1))
    assert f"covers <strong>{covered:,.0f}</strong> of <strong>{total:,.0f}</strong>" in summary
    assert f"({covered / total * 100:.1f}%)" in summary.replace("<strong>", "").replace("</strong>", "")
    # within a filter the call list is the top N of the filtered rows, across pages
    smb = scores[scores["segment"] == "SMB"]
    page2 = list_rows(client.get("/ui/?segment=SMB&capacity=60&page=1&min_tier=any").text)
    assert len(page2) == len(smb) and sum("call-list" in x["class"] for x in page2) == 60
    second_page = list_rows(client.get("/ui/?capacity=150&page=2&min_tier=any").text)
    assert sum("call-list" in x["class"] for x in second_page) == 50
    assert len(list_rows(client.get("/ui/?capacity=0").text)) == 100


def test_the_call_list_skips_accounts_below_the_minimum_tier(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"]
    rows = list_rows(client.get("/ui/?capacity=60").text)  # by default: medium and high only
    called = [x for x in rows if "call-list" in x["class"]]
    expected = scores[scores["risk_tier"] != "low"].nlargest(60, "revenue_at_risk")["customer_id"]
    assert [x["customer"] for x in called] == list(expected) and {x["tier"] for x in called} <= {
        "high",
        "medium",
    }
    last = scores.set_index("customer_id").loc[called[-1]["customer"], "revenue_at_risk"]
    richer_low = set(
        scores[(scores["risk_tier"] == "low") & (scores["revenue_at_risk"] > last)]["customer_id"]
    )
    assert richer_low and richer_low <= {x["customer"] for x in rows} - {
        x["customer"] for x in called
    }  # listed, not called
    high = [
        x for x in list_rows(client.get("/ui/?capacity=30&min_tier=high").text) if "call-list" in x["class"]
    ]
    assert {x["tier"] for x in high} == {"high"} and len(high) == 30
    assert client.get("/ui/?min_tier=urgent").status_code == 400


def test_filtered_to_an_owner_the_call_list_is_that_owners_week(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"]
    r = client.get("/ui/", params={"owner": "ben carter", "capacity": 40, "owner_capacity": 3})  # any case
    rows = list_rows(r.text)
    assert rows and {scores.set_index("customer_id").loc[x["customer"], "csm_owner"] for x in rows} == {
        "Ben Carter"
    }
    assert sum("call-list" in x["class"] for x in rows) == 3  # not the team's 40
    assert "Ben Carter can call <strong>3</strong> this week" in r.text
    team = list_rows(client.get("/ui/", params={"capacity": 40, "owner_capacity": 3}).text)
    assert sum("call-list" in x["class"] for x in team) == 40


def test_filters_and_ids_ignore_case_and_search_finds_names(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"]
    upper = list_rows(client.get("/ui/?tier=HIGH&segment=enterprise").text)
    expected = scores[(scores["risk_tier"] == "high") & (scores["segment"] == "Enterprise")]
    assert [x["customer"] for x in upper] == list(expected["customer_id"])[:100] and upper
    named = list_rows(client.get("/ui/?q=delta%20m%C3%89dia").text)  # a name, in another case
    assert named and {x["customer"] for x in named} == set(
        scores[scores["name"].str.startswith("Delta Média")]["customer_id"]
    )
    lower = client.get("/ui/accounts/c0001")
    assert lower.status_code == 200 and "Account C0001" in lower.text


def test_columns_sort_both_ways_and_the_rank_stays_by_revenue(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"].set_index("customer_id")
    for key, column in (
        ("probability", "probability"),
        ("change", "probability_change"),
        ("renewal", "renewal_date"),
    ):
        for direction in ("asc", "desc"):
            html = client.get(f"/ui/?sort={key}&dir={direction}&min_tier=any").text
            shown = [scores.loc[x["customer"], column] for x in list_rows(html)]
            assert shown == sorted(shown, reverse=direction == "desc"), (key, direction)
            header = re.search(
                rf'<th scope="col" class="num" aria-sort="(\w+)">\s*<a href="[^"]*" data-sort="{key}"', html
            )
            assert header and header.group(1) == ("descending" if direction == "desc" else "ascending")
    # the call list is still the best-value set, whatever the order shown
    by_probability = list_rows(client.get("/ui/?sort=probability&capacity=5&min_tier=any").text)
    by_revenue = list_rows(client.get("/ui/?capacity=5&min_tier=any").text)
    assert {x["customer"] for x in by_probability if "call-list" in x["class"]} == {
        x["customer"] for x in by_revenue[:5]
    }
    assert client.get("/ui/?sort=name").status_code == 400


def test_bad_parameters_get_a_400_naming_them(client: TestClient) -> None:
    r = client.get("/ui/?capacity=lots")
    assert r.status_code == 400 and "&#39;capacity&#39; must be a whole number" in r.text
    assert client.get("/ui/?page=0").status_code == 400
    assert client.get("/ui/export.csv?capacity=-1").status_code == 400


def test_csv_export_honours_filters_and_shows_numbers_as_the_page_does(
    client: TestClient, tables: Tables
) -> None:
    r = client.get("/ui/export.csv?tier=high&capacity=5")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="churn-risk-2025-07-01.csv"' in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM: spreadsheets read the names right
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    high = tables["scores"][tables["scores"]["risk_tier"] == "high"]
    assert [x["customer_id"] for x in rows] == list(high["customer_id"])  # all rows, not one page, in order
    assert {x["risk_tier"] for x in rows} == {"high"}
    assert [x["in_call_list"] for x in rows].count("yes") == 5
    first = high.iloc[0]
    assert (
        rows[0]["revenue_at_risk"] == f"{first['revenue_at_risk']:,.0f}"
    )  # as displayed, not 9418.075873690666
    assert rows[0]["probability"] == f"{first['probability'] * 100:.1f}%"
    assert rows[0]["link"] == f"http://testserver/ui/accounts/{first['customer_id']}"
    assert rows[0]["top_reason"] == first["top_reason"] and rows[0]["top_play"] == "Training and check-in"
    assert rows[0]["name"] == first["name"]
    owners = {
        x["owner"]
        for x in csv.DictReader(io.StringIO(client.get("/ui/export.csv").content.decode("utf-8-sig")))
    }
    # a cell a spreadsheet would run as a formula is exported as text
    assert "'=cmd|' /C calc'!A0" in owners and not any(o.startswith("=") for o in owners)
    empty = client.get("/ui/export.csv?q=nobody").content.decode("utf-8-sig").splitlines()
    assert len(empty) == 1 and empty[0].startswith("position,customer_id,name,revenue_at_risk")


def test_links_carry_the_mount_prefix(client: TestClient) -> None:
    html = client.get("/ui/?tier=high").text
    assert 'href="/ui/accounts/' in html and 'href="/ui/overview"' in html and 'action="/ui/"' in html
    assert 'href="/ui/export.csv?tier=high"' in html
    assert 'href="/ui/?tier=high&amp;page=2"' in html or "page 1 of 1" in html
    assert (
        'href="/ui/accounts/C0' in html and "?from=tier%3Dhigh" in html
    )  # the back link will keep the filter
    # served on its own (no mount) the links start at /
    from churnml.workspace.pages import create_pages_app as standalone

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from starlette.testclient import TestClient
    alone = TestClient(standalone()).get("/").text
    assert 'href="/accounts/' in alone and 'href="/overview"' in alone


# ------------------------------------------------------------------------------------------ account page


def test_account_page_shows_reasons_plays_history_and_changes(client: TestClient, tables: Tables) -> None:
    scores = tables["scores"]
    customer = scores[scores["risk_tier"] == "high"]["customer_id"].iloc[0]
    r = client.get(f"/ui/accounts/{customer}")
    assert r.status_code == 200
    html = r.text
    reasons = html[html.index('id="reasons"') : html.index('id="context"')]
    for rank in (1, 2, 3):
        assert f"Sentence {rank} about" in reasons
    assert "Play for login trend" in reasons and "Do something about support tickets in 30 days" in reasons
    assert "lower than 89% of accounts that stayed" in reasons  # how each reason compares
    assert "Protective fact" not in reasons and "No action needed" not in html
    assert html.count('<svg class="chart"') + html.count('class="chart" role="img"') >= 2
    # the SHAP chart writes the contributions on the bars and names the reasons
    shap_svg = html[html.index('aria-label="What drives this account') :]
    assert "+0.800" in shap_svg and "login trend" in shap_svg
    history_svg = html[html.index('aria-label="Churn probability at each score"') :]
    assert "2025-05-01" in history_svg
    changes = re.sub(
        r"\s+", " ", re.sub(r"<[^>]+>", "", html[html.index('id="changes"') : html.index('id="history"')])
    )
    history = tables["score_history"][tables["score_history"]["customer_id"] == customer]
    before, now = history["probability"].iloc[-2], history["probability"].iloc[-1]
    assert f"{before * 100:.1f}% on 2025-06-01 → {now * 100:.1f}% on 2025-07-01" in changes
    assert f"up {(now - before) * 100:.1f} points" in changes
    assert "Logins in the last 30 days: 32 → 12 (still a reason)" in changes
    assert "Support tickets in the last 30 days: 0 → 4 (new among the reasons)" in changes
    assert "Share of seats in use: 0.2 → 0.6 (no longer a reason)" in changes
    context = html[html.index('id="context"') : html.index('id="activity"')]
    assert "Industry: finance" in context and "Play for" not in context


def test_an_account_needing_no_action_says_so_and_shows_what_keeps_it_safe(
    client: TestClient, tables: Tables
) -> None:
    scores = tables["scores"]
    customer = scores[scores["risk_tier"] == "low"]["customer_id"].iloc[0]
    html = client.get(f"/ui/accounts/{customer}").text
    reasons = html[html.index('id="reasons"') : html.index('id="context"')]
    assert "No action needed" in reasons
    assert "Protective fact 1 of" in reasons and "Protective fact 2 of" in reasons
    assert "What keeps this account" in reasons and "What drives this account" not in html
    assert "Play for" not in reasons  # no play: nobody needs to call
    assert "Worth watching, no call needed" in reasons


def test_unknown_account_is_a_404_page(client: TestClient) -> None:
    r = client.get("/ui/accounts/NOBODY")
    assert r.status_code == 404
    assert "No account &#39;NOBODY&#39; in the latest scores" in r.text
    assert client.get("/ui/no-such-page").status_code == 404


def test_data_is_escaped_everywhere(client: TestClient) -> None:
    listing = client.get("/ui/", params={"q": "script"})
    account = client.get("/ui/accounts/" + "%3Cscript%3Ealert('id')%3C%2Fscript%3E")
    assert account.status_code == 200
    for r in (listing, account):
        assert "<script" not in r.text.lower()
        assert "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt; &amp; left" in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]  # no script may run
    assert "&lt;script&gt;alert(&#39;id&#39;)&lt;/script&gt;" in listing.text
    assert (
        'href="/ui/accounts/%3Cscript%3Ealert%28%27id%27%29%3C%2Fscript%3E?from=q%3Dscript"' in listing.text
    )


# ------------------------------------------------------------------------------------------ overview


def test_overview_has_every_chart_and_table(client: TestClient) -> None:
    r = client.get("/ui/overview")
    assert r.status_code == 200
    html = r.text
    for label in ("Monthly churn rate", "Net revenue retention over 12 months", "Monthly net revenue retention",
                  "NPS (-100 to 100)", "Cohort retention", "Customer lifetime value by segment",
                  "Revenue at risk by segment"):  # fmt: skip
        assert f'aria-label="{label}' in html, label
    assert "2.5%" in html and "180,000" in html and "180.0k" in html  # values on the charts and in the tables
    assert (
        html.count("<svg") == 7 and html.count("<figcaption>Good: ") == 7
    )  # what good looks like, per chart
    assert "Monthly retention rate" not in html.split('id="monthly-table"')[0]  # no chart repeating churn
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):  # each chart points to the table with its figures
        target = re.search(r'aria-describedby="([^"]+)"', svg.split(">")[0]).group(1)
        assert f'id="{target}"' in html
    assert "Monthly figures end at 2025-06" in html and "61 days" in html


def test_overview_of_an_older_workspace_says_what_is_missing(home: Path, tables: Tables) -> None:
    core = {k: v for k, v in tables.items() if k in ("scores", "reasons", "score_history", "meta")}
    write_workspace(Settings.from_env().workspace_path, core)
    r = make_client(create_pages_app()).get("/ui/overview")
    assert r.status_code == 200 and r.text.count("Not in this workspace") == 3


def test_overview_charts_are_drawn_once_per_workspace_file(
    client: TestClient, workspace: Path, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnml.workspace.pages import views

    drawn = []
    real = views.overview_charts
    monkeypatch.setattr(views, "overview_charts", lambda *args: drawn.append(1) or real(*args))
    first = client.get("/ui/overview").text
    assert client.get("/ui/overview").text == first and len(drawn) == 1
    segments = tables["segment_summary"].assign(cltv=[1111.0, 2222.0, 3333.0])
    write_workspace(workspace, {**tables, "segment_summary": segments})  # `churnml score` ran again
    again = client.get("/ui/overview").text
    assert len(drawn) == 2 and "3,333" in again and "3,333" not in first


def test_missing_workspace_is_a_503_with_the_command_to_run(home: Path) -> None:
    c = make_client(create_pages_app())
    for path in ("/ui/", "/ui/overview", "/ui/accounts/C0001", "/ui/export.csv"):
        r = c.get(path)
        assert r.status_code == 503, path
        assert "No scores yet: run <code>churnml score --spec" in r.text


def test_a_rescored_workspace_is_read_on_the_next_request(
    client: TestClient, workspace: Path, tables: Tables
) -> None:
    assert "accounts 1–100 of 250" in client.get("/ui/").text
    with open_workspace(workspace) as in_flight:  # a slow request (a CSV download) still reading the old file
        write_workspace(workspace, {**tables, "scores": tables["scores"].head(3)})
        assert "accounts 1–3 of 3" in client.get("/ui/").text
        assert in_flight.execute("SELECT count(*) FROM scores").fetchone() == (250,)


def test_a_corrupt_workspace_is_a_503_not_a_500(home: Path) -> None:
    path = Settings.from_env().workspace_path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a duckdb file" * 100)
    r = make_client(create_pages_app()).get("/ui/")
    assert r.status_code == 503 and "could not be read" in r.text


# ------------------------------------------------------------------------------------------ auth


@pytest.fixture
def secured(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Callable:
    monkeypatch.setenv("CHURNML_API_TOKEN", TOKEN)
    return lambda: make_client(create_pages_app(), follow_redirects=False)


def form_csrf(html: str) -> str:
    """The CSRF token a page's form carries."""
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(c: TestClient, token: str, target: str = "/ui/", **headers: str):  # noqa: ANN201
    """Through the form, as a browser does: load it (CSRF cookie and field), then post it."""
    csrf = form_csrf(c.get(f"/ui/login?next={target}").text)
    return c.post("/ui/login", data={"token": token, "next": target, "csrf": csrf}, headers=headers)


def test_login_sets_a_signed_session_cookie_not_the_token(secured: Callable) -> None:
    c = secured()
    assert PUBLIC_PATHS == ("/ui/login",)
    form = c.get("/ui/login?next=/ui/overview")
    assert form.status_code == 200 and 'type="password" name="token"' in form.text
    assert 'name="next" value="/ui/overview"' in form.text
    assert f"{CSRF_COOKIE}=" in form.headers["set-cookie"]
    r = sign_in(c, TOKEN, "/ui/overview")
    assert r.status_code == 303 and r.headers["location"] == "/ui/overview"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(f"{SESSION_COOKIE}="))
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in value and "." in value  # a signed session id, not the token
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age="):
        assert attribute in cookie
    page = c.get("/ui/overview")  # the client now sends the cookie
    assert page.status_code == 200 and "Signed in as application token" in page.text
    out = c.post("/ui/logout", data={"csrf": form_csrf(page.text)})
    assert out.status_code == 303 and f'{SESSION_COOKIE}=""' in out.headers["set-cookie"]
    c.cookies.set(SESSION_COOKIE, value)  # the signed-out session, replayed: dead
    assert c.get("/ui/overview").status_code == 401


def test_without_a_configured_token_there_is_nothing_to_sign_in_to(client: TestClient) -> None:
    r = client.get("/ui/login?next=/ui/overview", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/overview"
    assert "Sign out" not in client.get("/ui/").text


def test_wrong_or_missing_token_is_refused(secured: Callable) -> None:
    c = secured()
    r = sign_in(c, "guess")
    assert r.status_code == 401 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert "That token is not right" in r.text
    assert c.get("/ui/", headers={"accept": "application/json"}).status_code == 401
    browser = c.get("/ui/accounts/C0001?x=1", headers={"accept": "text/html"})
    assert browser.status_code == 303
    assert browser.headers["location"] == "/ui/login?next=%2Fui%2Faccounts%2FC0001%3Fx%3D1"
    c.cookies.set(SESSION_COOKIE, "guess.guess")
    assert c.get("/ui/export.csv").status_code == 401
    c.cookies.set(SESSION_COOKIE, TOKEN)  # the token itself is no session
    assert c.get("/ui/export.csv").status_code == 401
    assert c.get("/ui/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200  # API clients
    # after login, only a path inside the pages: never another site
    for target in ("https://evil.example/", "//evil.example/ui/", "/elsewhere"):
        r = sign_in(secured(), TOKEN, target)
        assert r.headers["location"] == "/ui/", target


def test_sign_in_and_out_refuse_forms_from_other_sites(secured: Callable) -> None:
    c = secured()
    csrf = form_csrf(c.get("/ui/login").text)
    no_token = c.post("/ui/login", data={"token": TOKEN, "next": "/ui/"})
    assert no_token.status_code == 403 and SESSION_COOKIE not in no_token.headers.get("set-cookie", "")
    forged = c.post("/ui/login", data={"token": TOKEN, "next": "/ui/", "csrf": "x" + csrf[1:]})
    assert forged.status_code == 403
    elsewhere = sign_in(c, TOKEN, origin="https://evil.example")
    assert elsewhere.status_code == 403 and SESSION_COOKIE not in elsewhere.headers.get("set-cookie", "")
    assert sign_in(c, TOKEN).status_code == 303
    assert c.post("/ui/logout", data={}).status_code == 403  # no CSRF token: still signed in
    assert c.post("/ui/logout", data={"csrf": "guess"}).status_code == 403
    assert c.get("/ui/").status_code == 200


def test_repeated_wrong_tokens_lock_out_the_client_but_never_the_right_token(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNML_API_TOKEN", TOKEN)
    monkeypatch.setenv("CHURNML_AUTH_ATTEMPTS", "3")
    monkeypatch.setenv("CHURNML_AUTH_WINDOW", "1.5")
    c = make_client(create_pages_app(), follow_redirects=False)
    for _ in range(3):
        assert sign_in(c, "guess").status_code == 401
    locked = sign_in(c, "guess")
    assert locked.status_code == 429 and SESSION_COOKIE not in locked.headers.get("set-cookie", "")
    assert 1 <= int(locked.headers["retry-after"]) <= 2 and "Too many wrong tokens" in locked.text
    assert c.get("/ui/", headers={"authorization": "Bearer guess"}).status_code == 429  # every route
    assert sign_in(c, TOKEN).status_code == 303  # the right token is never locked out
    time.sleep(1.6)
    assert sign_in(make_client(create_pages_app(), follow_redirects=False), "guess").status_code == 401


# ------------------------------------------------------------------------------------------ charts


def _ticks(svg: str) -> list[str]:
    """The text of an SVG chart's tick labels and annotations (matplotlib writes them as <text>)."""
    return [re.sub(r"<[^>]+>", "", s).strip() for s in re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)]


def test_charts_have_labelled_axes_from_zero_for_rates_and_keep_text_literal() -> None:
    svg = charts.bar_chart(
        ["A $5 plan", "<b>B</b>"], [1500.0, 25000.0], "CLTV", axis_label="lifetime value (EUR)"
    )
    assert svg.startswith("<svg") and 'aria-label="CLTV"' in svg and "width=" not in svg.split(">")[0]
    assert "A $5 plan" in svg and "&lt;b&gt;B&lt;/b&gt;" in svg and "<b>" not in svg
    assert "1,500" in svg and "25.0k" in svg and "lifetime value (EUR)" in svg
    # a rate's axis starts at zero: 3.6% -> 1.9% must not fill the chart like 48% -> 57%
    small = _ticks(charts.line_chart(["2025-01", "2025-02"], [0.036, 0.019], "Rate", axis_label="churn (%)"))
    assert "0.0%" in small and "churn (%)" in small
    assert "1.9%" in small  # the latest value is written at its point
    free = _ticks(charts.line_chart(["a", "b"], [1.02, 0.97], "NRR", axis_label="MRR kept (%)", zero_based=False,
                                    references=[charts.Reference(1.0, "100%: revenue kept")]))  # fmt: skip
    assert "0.0%" not in free and "100%: revenue kept" in free
    banded = _ticks(charts.line_chart(["a", "b", "c"], [0.1, 0.3, 0.6], "Risk", axis_label="p", ceiling=1.0,
                                      bands=[charts.Band(0, 0.2, "low", "#2e7d32"), charts.Band(0.2, 0.5, "medium", "#b9770e"),
                                             charts.Band(0.5, 1.0, "high", "#c0392b")]))  # fmt: skip
    assert {"low", "medium", "high"} <= set(banded)
    months = [f"2024-{m:02d}" for m in range(1, 13)] + [f"2025-{m:02d}" for m in range(1, 7)]
    long = _ticks(charts.line_chart(months, [0.02] * 18, "Churn", axis_label="%"))
    assert (
        sum(s in months for s in long) <= charts.MAX_TICKS + 1 and "2025-06" in long
    )  # no crowded month labels
    assert [s for s in long if s == "2.0%"] == ["2.0%"] or long.count("2.0%") <= 2  # one value label, not 18
    shap = charts.contributions_chart(["raises", "lowers"], [0.42, -0.2], "Why")
    assert "+0.420" in shap and "-0.200" in shap
    many = charts.cohort_curves([(f"2024-{m:02d}", [0, 1], [1.0, 0.9]) for m in range(1, 13)], "Cohorts")
    assert "8 of 12 cohorts" in many and "2024-01: 90%" in many and "2024-12: 90%" in many
    assert "share still active (%)" in many
