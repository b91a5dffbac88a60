"""Holdouts and impact on the CSM pages: held-out accounts are marked and kept off the call list, the
overview's impact panel reads the outcomes in the store, and with holdouts off the pages say impact
cannot be measured. A real SQLite store under CHURNML_HOME, pages through Starlette's TestClient."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnml.config import Settings
from churnml.impact.holdout import CONTROL, HoldoutPolicy, mark_holdouts
from churnml.workspace.holdouts import read_holdouts, record_holdouts, record_outcomes
from churnml.workspace.pages import create_pages_app
from churnml.workspace.store import open_store
from tests.test_pages import list_rows, make_client, write_workspace

Tables = dict[str, pd.DataFrame]


def with_holdouts(tables: Tables, share: float) -> Tables:
    """The page tests' workspace as `churnml score` writes it with holdouts at ``share``."""
    scores = mark_holdouts(tables["scores"], "2025-07", HoldoutPolicy(share))
    meta = tables["meta"].assign(holdout_share=str(share), campaign_period="2025-07")
    return {**tables, "scores": scores, "meta": meta}


@pytest.fixture
def held(home: Path, tables: Tables) -> Tables:
    marked = with_holdouts(tables, 0.3)
    write_workspace(Settings.from_env().workspace_path, marked)
    return marked


def test_held_out_accounts_are_marked_and_left_off_the_call_list(held: Tables) -> None:
    client = make_client(create_pages_app())
    scores = held["scores"]
    control = scores[scores["holdout_arm"] == CONTROL]
    assert len(control) > 5
    pages = [client.get(f"/ui/?capacity=1000&min_tier=medium&page={n}").text for n in (1, 2, 3)]
    rows = {x["customer"]: x for page in pages for x in list_rows(page)}
    assert len(rows) == len(scores)
    for cid in control["customer_id"]:
        assert "call-list" not in rows[cid]["class"], cid
    eligible = scores[scores["risk_tier"] != "low"]
    called = [c for c, x in rows.items() if "call-list" in x["class"]]
    assert sorted(called) == sorted(eligible.loc[eligible["holdout_arm"] != CONTROL, "customer_id"])
    shown = [
        html.unescape(c)
        for page in pages
        for c in re.findall(r'data-customer="([^"]*)">(?:(?!</tr>).)*hold out: do not contact', page, re.S)
    ]
    assert sorted(shown) == sorted(control["customer_id"])
    assert "30% of the accounts eligible for a call are held out" in pages[0]
    first = next(c for c in control["customer_id"] if c.startswith("C"))
    account = client.get(f"/ui/accounts/{first}")
    assert "hold out: do not contact" in account.text and "2025-07's control group" in account.text
    exported = client.get("/ui/export.csv?capacity=1000").text
    assert exported.count("hold out: do not contact") == len(control)


def test_with_holdouts_off_the_pages_say_impact_cannot_be_measured(home: Path, tables: Tables) -> None:
    write_workspace(Settings.from_env().workspace_path, with_holdouts(tables, 0.0))
    client = make_client(create_pages_app())
    risk = client.get("/ui/")
    assert "Holdouts are off" in risk.text and "cannot be measured" in risk.text
    assert "hold out: do not contact" not in risk.text
    overview = client.get("/ui/overview")
    assert 'id="impact-off"' in overview.text and "cannot be measured" in overview.text


def test_the_impact_panel_shows_save_rates_with_interval_mde_and_revenue_kept(
    held: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNML_PLAY_COST", "25")
    settings = Settings.from_env()
    client = make_client(create_pages_app())
    before = client.get("/ui/overview").text
    assert "Too early to tell" in before and "no held-out or called account" in before
    store = open_store(settings.store_url)
    try:
        record_holdouts(store, held["scores"], 60)
        assigned = read_holdouts(store)
        rng = np.random.default_rng(4)
        churned = np.where(
            assigned["arm"] == CONTROL, rng.random(len(assigned)) < 0.6, rng.random(len(assigned)) < 0.2
        )
        matured = assigned.assign(churned=churned, revenue_kept=0.0)
        record_outcomes(store, matured.iloc[: len(matured) // 2], dt.date(2025, 9, 1))
    finally:
        store.close()
    html = client.get("/ui/overview").text
    panel = html.split('id="impact"')[1].split("</section>")[0]
    half = matured.iloc[: len(matured) // 2]
    treated, control = half[half["arm"] != CONTROL], half[half["arm"] == CONTROL]
    assert f"of the {len(treated):,} accounts called stayed" in panel
    assert f"against {(1 - control['churned'].mean()) * 100:.1f}% of the {len(control):,} held out" in panel
    assert "95% interval" in panel and "minimum detectable effect" in panel
    assert f"{len(matured) - len(half)} more accounts wait" in panel
    plays = re.findall(r'class="impact-row" data-play="([^"]*)"', panel)
    assert plays[0] == "all plays" and set(plays[1:]) == set(half["play"])
    assert "ROI" in panel
    assert re.search(r"<td class=\"num\">-?[\d,]+%</td>", panel)  # an ROI figure, with a cost per play set


def test_the_call_list_can_take_the_most_expected_revenue_saved(home: Path, tables: Tables) -> None:
    marked = with_holdouts(tables, 0.1)
    scores = marked["scores"]
    rng = np.random.default_rng(9)
    scores["uplift"] = rng.uniform(-0.02, 0.2, len(scores))
    scores["expected_revenue_saved"] = scores["uplift"] * scores["mrr"] * 60 / (365.25 / 12)
    meta = marked["meta"].assign(uplift_model="x")
    write_workspace(Settings.from_env().workspace_path, {**marked, "scores": scores, "meta": meta})
    client = make_client(create_pages_app())
    page = client.get("/ui/?call_by=saved&capacity=10").text
    called = [x["customer"] for x in list_rows(page) if "call-list" in x["class"]]
    eligible = scores[(scores["risk_tier"] != "low") & (scores["holdout_arm"] != CONTROL)]
    best = eligible.sort_values(["expected_revenue_saved", "customer_id"], ascending=[False, True])[
        "customer_id"
    ][:10]
    assert sorted(called) == sorted(best) and "expected revenue saved (uplift × MRR × horizon" in page
    by_risk = [
        x["customer"] for x in list_rows(client.get("/ui/?capacity=10").text) if "call-list" in x["class"]
    ]
    assert sorted(by_risk) != sorted(called)
    assert 'data-sort="saved"' in page
    bad = client.get("/ui/?call_by=luck")
    assert bad.status_code == 400 and "call_by" in bad.text


def test_held_out_accounts_get_no_alert(held: Tables) -> None:
    from churnml.workspace.alerts import find_crossings
    from churnml.workspace.pages import open_workspace

    settings = Settings.from_env()
    with open_workspace(settings.workspace_path, settings) as con:
        alerted = {c.customer_id for c in find_crossings(con, 0.0)}
    scores = held["scores"]
    control = set(scores.loc[scores["holdout_arm"] == CONTROL, "customer_id"])
    rising = set(scores.loc[scores["probability_change"] > 0, "customer_id"])
    assert control & rising and not control & alerted
    assert alerted == rising - control
