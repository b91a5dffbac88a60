"""Reasons a CSM can read: SHAP contributions turned into plain sentences.

Contributions come from LightGBM's ``pred_contrib`` (exact TreeSHAP, in log-odds of the uncalibrated
booster). Each reason states the feature's value in words built from the feature catalogue, with the
numbers it quotes returned beside it (``values``), so a client can check that the sentence and the
data agree: "Logins fell 62% over the last 30 days (12 vs 32 in the 30 days before)".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnml.catalogue import FeatureInfo
from churnml.features import LOOKBACK, TREND, WINDOWS, slug

__all__ = ["Reason", "describe_feature", "explain_rows", "format_number", "top_reasons"]


@dataclass(frozen=True)
class Reason:
    feature: str
    label: str
    sentence: str
    value: float | str | None
    contribution: float  # SHAP value, log-odds; > 0 raises churn risk
    direction: str  # "raises risk" | "lowers risk"
    strength: str  # "strong" | "moderate" | "slight"
    actionable: bool
    group: str
    values: dict[str, float | str | None] = field(default_factory=dict)  # every number the sentence quotes


def format_number(x: float) -> str:
    """How sentences print numbers: integers plainly, thousands with commas, others to 1-2 decimals."""
    if not math.isfinite(x):
        return "unknown"
    if abs(x - round(x)) < 1e-9:
        return f"{int(round(x)):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:,.1f}"
    return f"{x:.2f}"


def _num(row: Mapping[str, object], name: str) -> float | None:
    v = row.get(name)
    if v is None or isinstance(v, str):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _noun(n: float, info: FeatureInfo) -> str:
    return info.singular if n == 1 else info.plural


def _trend(info: FeatureInfo, row: Mapping[str, object], s: str) -> tuple[str, dict]:
    current = _num(row, f"{s}_count_{TREND}d") or 0.0
    delta = _num(row, f"{s}_count_trend_delta") or 0.0
    before = current - delta
    values = {"current": current, "previous": before}
    period = f"the last {TREND} days"
    if before == 0 and current == 0:
        return f"No {info.plural} in the last {2 * TREND} days", values
    if before == 0:
        return (f"{_cap(info.plural)} started: {format_number(current)} in {period}, none in the {TREND} days before",
                values)  # fmt: skip
    pct = round(100 * (current - before) / before)
    values["change_percent"] = float(pct)
    if pct == 0:
        return (f"{_cap(info.plural)} held steady over {period} ({format_number(current)} vs "
                f"{format_number(before)} in the {TREND} days before)", values)  # fmt: skip
    verb = "fell" if pct < 0 else "rose"
    return (f"{_cap(info.plural)} {verb} {format_number(abs(pct))}% over {period} ({format_number(current)} vs "
            f"{format_number(before)} in the {TREND} days before)", values)  # fmt: skip


def _event_sentence(info: FeatureInfo, row: Mapping[str, object]) -> tuple[str, dict] | None:
    name, s = info.name, _event_slug(info)
    x = _num(row, name)
    if name in (f"{s}_count_trend_ratio", f"{s}_count_trend_delta"):
        return _trend(info, row, s)
    for w in WINDOWS:
        if name == f"{s}_count_{w}d":
            n = x or 0.0
            if n == 0:
                return f"No {info.plural} in the last {w} days", {"count": 0.0}
            return f"{format_number(n)} {_noun(n, info)} in the last {w} days", {"count": n}
    if name == f"{s}_count_total":
        n = x or 0.0
        return f"{format_number(n)} {_noun(n, info)} since the account started", {"count": n}
    if name == f"{s}_active_days_{TREND}d":
        n = x or 0.0
        return f"{_cap(info.plural)} on {format_number(n)} of the last {TREND} days", {"days": n}
    if name == f"days_since_last_{s}":
        if x is None:
            return f"No {info.singular} yet", {"days": None}
        return f"The last {info.singular} was {format_number(x)} days ago", {"days": x}
    if name == f"{s}_mean_gap_days":
        if x is None:
            return f"Too few {info.plural} to know their usual rhythm", {"days": None}
        return f"{_cap(info.plural)} usually come every {format_number(x)} days", {"days": x}
    if name == f"{s}_overdue_ratio":
        since, gap = _num(row, f"days_since_last_{s}"), _num(row, f"{s}_mean_gap_days")
        if x is None or since is None or gap is None:
            return f"Too few {info.plural} to know their usual rhythm", {"ratio": x}
        values = {"ratio": x, "days_since": since, "usual_gap_days": gap}
        return (f"{format_number(since)} days since the last {info.singular}, {format_number(x)}× the usual gap "
                f"of {format_number(gap)} days", values)  # fmt: skip
    if name.startswith(f"{s}_value_") or name == f"{s}_last_value":
        v = info.value_label
        if x is None:  # no event with a value (events without one may exist: a ticket with no score)
            window = next((w for w in (TREND, LOOKBACK) if name.endswith(f"_{w}d")), None)
            scored = f"{v} on any {info.singular}" if v and info.singular else None
            empty = (
                f"No {scored or info.plural} in the last {window} days"
                if window
                else f"No {scored or info.singular} yet"
            )
            return empty, {"value": None}
        shown = format_number(x)
        if v and info.singular:
            for w in (TREND, LOOKBACK):
                if name == f"{s}_value_mean_{w}d":
                    return f"{_cap(v)} per {info.singular} averaged {shown} over the last {w} days", {
                        "value": x
                    }
                if name == f"{s}_value_sum_{w}d":
                    return f"{_cap(v)} across {info.plural} totalled {shown} over the last {w} days", {
                        "value": x
                    }
        return f"{_cap(info.label)}: {shown}", {"value": x}
    return None


def _event_slug(info: FeatureInfo) -> str:
    return slug(info.event_type or "")


def describe_feature(
    info: FeatureInfo, row: Mapping[str, object]
) -> tuple[str, dict[str, float | str | None]]:
    """A sentence stating ``info``'s value in ``row`` and the numbers it quotes."""
    if info.event_type:
        found = _event_sentence(info, row)
        if found:
            return found
    name = info.name
    x = _num(row, name)
    raw = row.get(name)
    if name == "tenure_days" and x is not None:
        return f"The account is {format_number(x)} days old", {"days": x}
    if name == "active_days_30d" and x is not None:
        return f"Active on {format_number(x)} of the last 30 days", {"days": x}
    if name == "active_users_30d":
        n = x or 0.0
        return f"{format_number(n)} active user{'' if n == 1 else 's'} in the last 30 days", {"users": n}
    if name == "mrr" and x is not None:
        return f"MRR is {format_number(x)}", {"mrr": x}
    if name == "mrr_change_90d":
        if x is None:
            return "No MRR history for the last 90 days", {"change": None}
        if x == 0:
            return "MRR unchanged over the last 90 days", {"change": 0.0}
        return f"MRR {'fell' if x < 0 else 'rose'} by {format_number(abs(x))} over the last 90 days", {
            "change": x
        }
    if name == "seats" and x is not None:
        return f"{format_number(x)} seats purchased", {"seats": x}
    if name == "seats_used_ratio":
        users, seats = _num(row, "active_users_30d") or 0.0, _num(row, "seats")
        if x is None or seats is None:
            return "Seat usage unknown (no seat count)", {"ratio": None}
        pct = round(100 * x)
        who = "active user" if users == 1 else "active users"
        return (f"{format_number(pct)}% of seats in use ({format_number(users)} {who} for {format_number(seats)} seats)",
                {"percent": float(pct), "users": users, "seats": seats})  # fmt: skip
    if name == "days_to_renewal" and x is not None:
        return f"Renewal in {format_number(x)} days", {"days": x}
    if name == "nps_detractor":
        if x is None:
            return "No NPS answer yet", {"flag": None}
        if x >= 1:
            return "The latest NPS answer was a detractor (0-6)", {"flag": 1.0}
        return "The latest NPS answer was not a detractor", {"flag": 0.0}
    if info.unit == "category" or isinstance(raw, str):
        shown = "unknown" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw)
        return f"{_cap(info.label)}: {shown}", {"value": None if shown == "unknown" else shown}
    if x is None:
        return f"{_cap(info.label)}: unknown", {"value": None}
    return f"{_cap(info.label)}: {format_number(x)}", {"value": x}


def _strength(contribution: float) -> str:
    a = abs(contribution)
    return "strong" if a >= 0.5 else "moderate" if a >= 0.15 else "slight"


def _plain(value: object) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return None if math.isnan(f) else f


def top_reasons(
    row: Mapping[str, object],
    contributions: np.ndarray,
    catalogue: list[FeatureInfo],
    k: int = 3,
    only_raising: bool = False,
) -> list[Reason]:
    """The ``k`` features with the largest effect on this row (or the largest risk-raising ones)."""
    contributions = np.asarray(contributions, float)
    order = np.argsort(-contributions if only_raising else -np.abs(contributions), kind="stable")
    reasons: list[Reason] = []
    for j in order:
        c = float(contributions[j])
        if len(reasons) >= k or (only_raising and c <= 0) or c == 0:
            break
        info = catalogue[j]
        sentence, values = describe_feature(info, row)
        reasons.append(
            Reason(
                feature=info.name,
                label=info.label,
                sentence=sentence,
                value=_plain(row.get(info.name)),
                contribution=c,
                direction="raises risk" if c > 0 else "lowers risk",
                strength=_strength(c),
                actionable=info.actionable,
                group=info.group,
                values=values,
            )  # fmt: skip
        )
    return reasons


def explain_rows(
    features: pd.DataFrame, contributions: np.ndarray, catalogue: list[FeatureInfo], k: int = 3,
    only_raising: bool = False,
) -> list[list[Reason]]:  # fmt: skip
    """Reasons for every row of a feature frame (contributions in the catalogue's column order)."""
    names = [i.name for i in catalogue]
    records = [dict(zip(names, values, strict=True)) for values in features[names].to_numpy(dtype=object)]
    return [top_reasons(r, contributions[i], catalogue, k, only_raising) for i, r in enumerate(records)]
