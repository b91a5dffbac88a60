"""How the pages show the data: templates, formats, the charts and the CSV export.

Numbers are formatted once here (``amount``, ``percent``, ``points``) and used by the templates and the
CSV alike, so an export reads as the page does. Each chart gets its unit, its reference lines and the
id of the table that carries the same figures (its text alternative).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

from churnml.workspace.csvout import BOM, csv_cell
from churnml.workspace.pages import charts
from churnml.workspace.pages.charts import Band, Reference

__all__ = [
    "EXPORT_COLUMNS", "account_charts", "amount", "cohort_table", "day", "environment", "export_csv",
    "holdout_note", "month", "overview_charts", "points", "revenue_definition",
]  # fmt: skip

TIER_COLOURS = {"low": "#2e7d32", "medium": "#b9770e", "high": "#c0392b"}


def month(value: Any) -> str:
    return value.strftime("%Y-%m") if hasattr(value, "strftime") else str(value)


def day(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return value.strftime("%Y-%m-%d") if hasattr(value, "strftime") else str(value)


def amount(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.0f}"


def points(value: Any) -> str:
    """A change of probability in percentage points: '+4.2 pts'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * 100:+.1f} pts"


def revenue_definition(meta: dict[str, Any]) -> str:
    """What 'revenue at risk' means, from what the scores were made with (horizon, currency)."""
    horizon = int(float(meta.get("horizon_days") or 0)) or None
    currency = str(meta.get("currency") or "").strip()
    months = f"{horizon / (365.25 / 12):.2f}" if horizon else "the horizon's months"
    within = f"the model's {horizon}-day horizon" if horizon else "the model's horizon"
    unit = f" in {currency}" if currency else " in the data's currency (the spec names none)"
    return (f"Revenue at risk = churn probability × MRR × {months} months ({within}){unit}: the revenue "
            "expected to be lost within the horizon if nothing is done. It can exceed one month's MRR.")  # fmt: skip


def holdout_note(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What the scores say about holdouts (None for a workspace from before them)."""
    raw = meta.get("holdout_share")
    if raw is None or str(raw).strip() == "":
        return None
    share = float(raw)
    if share <= 0:
        return {"off": True, "text": "Holdouts are off: every eligible account may be called, so the impact of the "
                "calls cannot be measured. Set CHURNML_HOLDOUT_SHARE (for example 0.1) and score again to measure it."}  # fmt: skip
    return {"off": False, "text": f"{share:.0%} of the accounts eligible for a call are held out this campaign "
            "(marked “hold out: do not contact”) as a control group: comparing them with the accounts called "
            "measures what the calls save."}  # fmt: skip


def environment():  # noqa: ANN201 - jinja2 stays an implementation detail
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("churnml.workspace.pages", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )  # fmt: skip
    env.filters.update(
        money=charts.format_money, percent=charts.format_percent, day=day, month=month, amount=amount,
        points=points, path_segment=lambda v: quote(str(v), safe=""), query=lambda d: urlencode(d),
    )  # fmt: skip
    return env


# ------------------------------------------------------------------------------------------ charts


def tier_bands(meta: dict[str, Any]) -> list[Band]:
    """The risk tiers the scores were made with, as bands of the probability axis."""
    high, medium = float(meta.get("risk_high") or 0.5), float(meta.get("risk_medium") or 0.2)
    return [Band(0.0, medium, "low", TIER_COLOURS["low"]), Band(medium, high, "medium", TIER_COLOURS["medium"]),
            Band(high, 1.0, "high", TIER_COLOURS["high"])]  # fmt: skip


def account_charts(data: dict[str, Any], meta: dict[str, Any]) -> dict[str, str]:
    out = {}
    history = data["history"]
    if history:
        out["history"] = charts.line_chart(
            [day(h["observation_date"]) for h in history], [h["probability"] for h in history],
            "Churn probability at each score", axis_label="churn probability (%)", bands=tier_bands(meta),
            ceiling=1.0, described_by="history-table",
        )  # fmt: skip
    shown = data["problems"] if data["action_needed"] else data["protective"]
    if shown:
        title = (
            "What drives this account's risk"
            if data["action_needed"]
            else "What keeps this account's risk low"
        )
        out["reasons"] = charts.contributions_chart([r["label"] or r["feature"] for r in shown],
                                                    [r["contribution"] for r in shown], title, "reasons-table")  # fmt: skip
    usage = data.get("usage")
    if usage and usage["series"]:
        out["usage"] = charts.small_multiples([month(m) for m in usage["months"]], usage["series"],
                                              "Usage per month", axis_label="events per month",
                                              described_by="usage-table")  # fmt: skip
    return out


def overview_charts(data: dict[str, Any], currency: str) -> dict[str, str]:
    out = {}
    unit = f" ({currency})" if currency else ""
    if monthly := data["monthly"]:
        months = [month(m["month"]) for m in monthly]
        out["churn"] = charts.line_chart(months, [m["churn_rate"] for m in monthly], "Monthly churn rate",
                                         axis_label="accounts churned in the month (%)", colour=charts.RISK_COLOUR,
                                         described_by="monthly-table")  # fmt: skip
        hundred = [Reference(1.0, "100%: revenue kept")]
        if any(m.get("nrr_12m") is not None and math.isfinite(m["nrr_12m"]) for m in monthly):
            out["nrr_12m"] = charts.line_chart(months, [m.get("nrr_12m") for m in monthly],
                                               "Net revenue retention over 12 months", axis_label="MRR kept (%)",
                                               zero_based=False, references=hundred, described_by="monthly-table")  # fmt: skip
        out["nrr"] = charts.line_chart(months, [m["nrr"] for m in monthly], "Monthly net revenue retention",
                                       axis_label="MRR kept a month later (%)", zero_based=False, references=hundred,
                                       described_by="monthly-table")  # fmt: skip
        out["nps"] = charts.line_chart(months, [m.get("nps") for m in monthly], "NPS (-100 to 100)",
                                       axis_label="NPS (points)", value_format=lambda v: f"{v:.0f}", zero_based=False,
                                       references=[Reference(0.0, "0: as many promoters as detractors")],
                                       described_by="monthly-table")  # fmt: skip
    if cohorts := data["cohorts"]:
        curves: dict[str, tuple[list[int], list[float]]] = {}
        for c in cohorts:
            months_since, retention = curves.setdefault(month(c["cohort"]), ([], []))
            months_since.append(int(c["months_since"]))
            retention.append(c["retention"])
        out["cohorts"] = charts.cohort_curves([(k, m, r) for k, (m, r) in curves.items()], "Cohort retention",
                                              "cohort-table")  # fmt: skip
    if segments := data["segments"]:
        names = [str(s["segment"]) for s in segments]
        out["cltv"] = charts.bar_chart(names, [s["cltv"] for s in segments], "Customer lifetime value by segment",
                                       axis_label=f"lifetime value per account{unit}", described_by="segment-table")  # fmt: skip
        out["segment_risk"] = charts.bar_chart(names, [s["revenue_at_risk"] for s in segments],
                                               "Revenue at risk by segment", axis_label=f"revenue at risk{unit}",
                                               colour=charts.RISK_COLOUR, described_by="segment-table")  # fmt: skip
    return out


def cohort_table(cohorts: list[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """Cohorts as rows (newest first) and months since start as columns, for the overview's table."""
    months = sorted({int(c["months_since"]) for c in cohorts})
    rows: dict[str, dict[str, Any]] = {}
    for c in cohorts:
        row = rows.setdefault(
            month(c["cohort"]), {"cohort": month(c["cohort"]), "size": c["size"], "cells": {}}
        )
        row["cells"][int(c["months_since"])] = c["retention"]
    return months, sorted(rows.values(), key=lambda r: r["cohort"], reverse=True)


# ------------------------------------------------------------------------------------------ CSV


EXPORT_COLUMNS = ["position", "customer_id", "name", "revenue_at_risk", "probability", "change_since_last_score",
                  "risk_tier", "mrr", "renewal_date", "last_touch", "owner", "segment", "plan", "top_reason",
                  "top_play", "in_call_list", "holdout", "snoozed_until", "link", "as_of"]  # fmt: skip


def _export_row(r: dict[str, Any], link: str) -> list[Any]:
    shown = {"position": r["position"], "customer_id": r["customer_id"], "name": r.get("name"),
             "revenue_at_risk": amount(r["revenue_at_risk"]), "probability": charts.format_percent(r["probability"]),
             "change_since_last_score": points(r.get("probability_change")), "risk_tier": r["risk_tier"],
             "mrr": amount(r["mrr"]), "renewal_date": day(r.get("renewal_date")), "last_touch": day(r.get("last_touch")),
             "owner": r.get("owner"), "segment": r.get("segment"), "plan": r.get("plan"), "top_reason": r.get("top_reason"),
             "top_play": r.get("top_play"), "in_call_list": "yes" if r.get("in_call_list") else "no",
             "holdout": "hold out: do not contact" if r.get("holdout_arm") == "control" else "",
             "snoozed_until": day(r["snoozed_until"]) if r.get("snoozed_until") is not None else "",
             "link": link + quote(str(r["customer_id"]), safe=""), "as_of": day(r.get("as_of"))}  # fmt: skip
    return [csv_cell(shown[c]) for c in EXPORT_COLUMNS]


def export_csv(batches: Iterable[list[dict[str, Any]]], link: str) -> Iterator[str]:
    """The risk list as CSV text chunks: UTF-8 with a BOM (spreadsheets then read names and arrows right),
    numbers as the page shows them, each account's page link."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    buffer.write(BOM)
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    for batch in batches:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(_export_row(r, link) for r in batch)
        yield buffer.getvalue()
