"""Alerts: accounts whose risk crossed a line since their previous score, per owner.

A crossing is an account that moved into a higher risk tier, or whose churn probability rose by at
least ``min_rise`` points, between its previous score and the latest (``scores.previous_*``, written by
`churnml score`). `churnml alerts` and the alerts page list them; the command writes a CSV and can POST
them as JSON to a webhook, retrying with backoff. A crossing that went out is recorded in the CSM store
(:mod:`churnml.workspace.store`), keyed by account and score date, so it is never sent twice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import duckdb
import pandas as pd

from churnml.workspace.csvout import BOM, csv_cell
from churnml.workspace.store import AccountState, AlertSent, Store

__all__ = ["AlertDeliveryError", "Crossing", "alerts_csv", "find_crossings", "post_webhook", "send_alerts"]

log = logging.getLogger(__name__)
TIER_RANK = {"low": 0, "medium": 1, "high": 2}


class AlertDeliveryError(RuntimeError):
    """The webhook did not take the alerts after every retry (nothing was recorded as sent)."""


@dataclass(frozen=True)
class Crossing:
    customer_id: str
    name: str | None
    owner: str | None
    previous_date: str
    score_date: str
    previous_probability: float
    probability: float
    previous_tier: str
    tier: str
    revenue_at_risk: float
    top_reason: str | None
    why: str  # "moved medium → high; up 12.3 points"

    def record(self) -> AlertSent:
        return AlertSent(self.customer_id, pd.Timestamp(self.score_date).date(), pd.Timestamp(self.previous_date).date(),
                         self.previous_probability, self.probability, self.previous_tier, self.tier, self.owner)  # fmt: skip


def _day(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def find_crossings(
    con: duckdb.DuckDBPyConnection, min_rise_points: float, states: Mapping[str, AccountState] | None = None
) -> list[Crossing]:
    """Accounts that moved into a higher tier or rose by ``min_rise_points`` since their previous score,
    by owner (an assigned owner over the data's), then by revenue at risk; held-out accounts never."""
    names = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'scores'")
             .fetchall()}  # fmt: skip
    if "previous_probability" not in names:
        return []  # a workspace from before previous scores were kept: nothing to compare
    name = "name" if "name" in names else "NULL AS name"
    # an alert asks a CSM to act: an account held out of this campaign (churnml.impact) must not get one
    held = " AND coalesce(CAST(holdout_arm AS VARCHAR), '') <> 'control'" if "holdout_arm" in names else ""
    rows = con.execute(
        f"SELECT customer_id, {name}, csm_owner, previous_date, as_of, previous_probability, probability, "
        f"previous_tier, risk_tier, revenue_at_risk, top_reason FROM scores WHERE previous_probability IS NOT NULL{held}"
    ).fetchall()
    states = states or {}
    found = []
    for cid, nm, owner, before_date, as_of, before, now, before_tier, tier, revenue, reason in rows:
        why = []
        if TIER_RANK.get(str(tier), 0) > TIER_RANK.get(str(before_tier), 0):
            why.append(f"moved {before_tier} → {tier}")
        rise = (now - before) * 100
        if rise >= min_rise_points:
            why.append(f"up {rise:.1f} points")
        if why:
            state = states.get(cid)
            found.append(Crossing(cid, nm, (state.owner if state and state.owner else None) or owner,
                                  _day(before_date), _day(as_of), float(before), float(now), str(before_tier),
                                  str(tier), float(revenue), reason, "; ".join(why)))  # fmt: skip
    return sorted(found, key=lambda c: (c.owner or "~", -c.revenue_at_risk, c.customer_id))


CSV_COLUMNS = ["owner", "customer_id", "name", "why", "previous_tier", "tier", "previous_probability",
               "probability", "revenue_at_risk", "previous_date", "score_date", "top_reason", "link"]  # fmt: skip


def alerts_csv(crossings: Sequence[Crossing], link: str = "") -> str:
    """The crossings as CSV (UTF-8 with a BOM, numbers as the pages show them, each account's link)."""
    buffer = io.StringIO()
    buffer.write(BOM)
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for c in crossings:
        row = asdict(c) | {"previous_probability": f"{c.previous_probability * 100:.1f}%",
                           "probability": f"{c.probability * 100:.1f}%", "revenue_at_risk": f"{c.revenue_at_risk:,.0f}",
                           "link": link + quote(c.customer_id, safe="")}  # fmt: skip
        writer.writerow([csv_cell(row[k]) for k in CSV_COLUMNS])
    return buffer.getvalue()


def post_webhook(
    url: str, payload: dict[str, Any], retries: int = 3, backoff: float = 1.0, timeout: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:  # fmt: skip
    """POST ``payload`` as JSON; a network error or a 5xx/429 answer is retried ``retries`` times with
    doubling waits. Returns the attempts used; raises AlertDeliveryError when none got a 2xx."""
    import httpx

    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        try:
            answer = httpx.post(
                url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout
            )
        except httpx.HTTPError as err:
            last = f"{type(err).__name__}: {err}"
            continue
        if 200 <= answer.status_code < 300:
            return attempt + 1
        last = f"HTTP {answer.status_code}"
        if answer.status_code < 500 and answer.status_code != 429:
            break  # the receiver refuses this payload: retrying will not change its mind
    raise AlertDeliveryError(
        f"webhook {url.split('?')[0]}: not delivered after {attempt + 1} attempt(s) ({last})"
    )


def send_alerts(
    store: Store, crossings: Sequence[Crossing], webhook_url: str | None = None, retries: int = 3,
    sleep: Callable[[float], None] = time.sleep, write: Callable[[list[Crossing]], None] | None = None,
) -> list[Crossing]:  # fmt: skip
    """Deliver the crossings not sent before (``write`` them, e.g. to the CSV, then to the webhook when
    given) and record them as sent; the new ones are returned. Nothing is recorded when writing fails or
    the webhook refuses them, so the next run delivers them again."""
    done = store.alerts_already_sent((c.customer_id, pd.Timestamp(c.score_date).date()) for c in crossings)
    new = [c for c in crossings if (c.customer_id, pd.Timestamp(c.score_date).date()) not in done]
    if write is not None:
        write(new)
    if not new:
        return []
    if webhook_url:
        owners: dict[str, list[dict[str, Any]]] = {}
        for c in new:
            owners.setdefault(c.owner or "(no owner)", []).append(asdict(c))
        payload = {"score_date": new[0].score_date, "alerts": len(new), "by_owner": owners}
        post_webhook(webhook_url, payload, retries, sleep=sleep)
    store.record_alerts_sent([c.record() for c in new], "webhook" if webhook_url else "csv")
    return new
