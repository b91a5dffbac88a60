"""What each feature family says about an account: one sentence per family, and the numbers it quotes.

A CSM repeats these on a call, so each states a fact in plain words ("Logins fell 62% over the last 30
days (12 vs 32 in the 30 days before)"), says "none" or "not yet" in words rather than printing a
missing value, and returns None when the value says nothing a person could repeat (too few events to
know their rhythm). Each is named by its family in `churnml.features.definitions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from churnml.features.sentences import (
    Fact,
    Quoted,
    Reading,
    ago,
    cap,
    format_number,
    noun,
    on_date,
    score_phrase,
    signed_change,
)
from churnml.features.windows import LOOKBACK, TREND

if TYPE_CHECKING:  # the catalogue's entries are what sentences read; it imports the registry
    from churnml.features.catalogue import FeatureInfo


# ----------------------------------------------------------------------------------- event sentences


def window_count(i: FeatureInfo, r: Reading) -> Fact:
    n = r.num(i.name) or 0.0
    if n == 0:
        return Fact(f"No {i.plural} in the last {i.window} days", {"count": 0.0}, i.higher == "riskier")
    return Fact(f"{format_number(n)} {noun(i, n)} in the last {i.window} days", {"count": n})


def trend(i: FeatureInfo, r: Reading) -> Fact:
    current = r.sibling(i, "count_window", TREND) or 0.0
    delta = r.sibling(i, "count_trend_delta") or 0.0
    before = current - delta
    values = {"current": current, "previous": before}
    if before == 0 and current == 0:
        return Fact(f"No {i.plural} in the last {2 * TREND} days", {})
    if before == 0:
        return Fact(
            f"{cap(i.plural)} started: {format_number(current)} in the last {TREND} days, none in the "
            f"{TREND} days before",
            {"current": current},
        )
    pct = round(100 * (current - before) / before)
    words = f"({format_number(current)} vs {format_number(before)} in the {TREND} days before)"
    if pct == 0:
        return Fact(f"{cap(i.plural)} held steady over the last {TREND} days {words}", values, True)
    verb = "fell" if pct < 0 else "rose"
    values["change_percent"] = float(abs(pct))
    better = (pct > 0) == (i.higher == "safer") and i.higher != "either"
    return Fact(f"{cap(i.plural)} {verb} {format_number(abs(pct))}% over the last {TREND} days {words}", values,
                better)  # fmt: skip


def active_days(i: FeatureInfo, r: Reading) -> Fact:
    n = r.num(i.name) or 0.0
    if n == 0:
        return Fact(f"No {i.plural} in the last {TREND} days", {"days": 0.0})
    return Fact(f"{cap(i.plural)} on {format_number(n)} of the last {TREND} days", {"days": n})


def _since_event(i: FeatureInfo, r: Reading, which: str) -> Fact:
    """'The last login was 3 days ago', 'The first purchase was 13 months ago, on 2024-05-27'."""
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.singular} yet", {}, i.higher == "safer")  # never had a failed payment, say
    if x < 1:
        return Fact(f"The {which} {i.singular} was less than a day ago", {})
    words, values = ago(x)
    day, date = on_date(r, x) if x >= 30 else (None, {})  # a date helps once it is weeks back
    return Fact(f"The {which} {i.singular} was {words}" + (f", on {day}" if day else ""), values | date)


def days_since(i: FeatureInfo, r: Reading) -> Fact:
    return _since_event(i, r, "last")


def days_since_first(i: FeatureInfo, r: Reading) -> Fact:
    return _since_event(i, r, "first")


def _since_start(i: FeatureInfo, r: Reading, text: str, quoted: str) -> Fact:
    """'400 logins since the account started'; 'No login yet' when there is none."""
    n = r.num(i.name)
    if not n:
        return Fact(f"No {i.singular} yet", {}, i.higher == "riskier")
    return Fact(f"{text.format(n=format_number(n), noun=noun(i, n), s='' if n == 1 else 's')} since the account "
                "started", {quoted: n})  # fmt: skip


def count_total(i: FeatureInfo, r: Reading) -> Fact:
    return _since_start(i, r, "{n} {noun}", "count")


def active_days_total(i: FeatureInfo, r: Reading) -> Fact:
    return _since_start(i, r, f"{cap(i.plural)} on {{n}} day{{s}}", "days")


def p_alive(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    if x is None:
        return None  # no such event yet: said by its count
    pct = float(round(100 * x))
    return Fact(f"{format_number(pct)}% chance that {i.plural} continue, judging by how often and how lately "
                "they came", {"percent": pct}, reassuring=pct >= 50 and i.higher == "safer")  # fmt: skip


def expected_days(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    if x is None:
        return None
    return Fact(f"About {format_number(x)} day{'' if x == 1 else 's'} with {i.plural} expected in the next "
                f"{i.window} days at their usual rhythm", {"days": x})  # fmt: skip


def mean_gap(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    if x is None:
        return None  # too few events to know their rhythm: nothing a CSM could repeat
    return Fact(f"{cap(i.plural)} usually come every {format_number(x)} days", {"days": x})


def overdue(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    since, gap = r.sibling(i, "days_since_last"), r.sibling(i, "mean_gap_days")
    if x is None or since is None or gap is None:
        return None
    values = {"days_since": since, "usual_gap_days": gap}
    if x >= 1:
        values["ratio"] = x
        return Fact(
            f"{format_number(since)} days since the last {i.singular}: {format_number(x)}× the usual gap "
            f"of {format_number(gap)} days",
            values,
        )
    return Fact(
        f"{format_number(since)} days since the last {i.singular}, within the usual gap of "
        f"{format_number(gap)} days",
        values,
        reassuring=True,
    )


# ----------------------------------------------------------------------------------- value sentences


def _value_in(i: FeatureInfo) -> str:
    """' (MRR)' after an amount, unless the value is just an amount."""
    return "" if i.value_label in ("", "value", "amount") else f" ({i.value_label})"


def _no_events_in_window(i: FeatureInfo, r: Reading) -> Fact | None:
    if (r.sibling(i, "count_window", i.window) or 0.0) == 0:
        return Fact(f"No {i.plural} in the last {i.window} days", {"count": 0.0})
    return None


def amount_sum(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name) or 0.0
    return _no_events_in_window(i, r) or Fact(
        f"{cap(i.plural)} totalled {format_number(x)}{_value_in(i)} in the last {i.window} days", {"total": x}
    )


def amount_mean(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.plural} in the last {i.window} days", {})
    return Fact(f"{cap(i.plural)} averaged {format_number(x)}{_value_in(i)} in the last {i.window} days",
                {"mean": x})  # fmt: skip


def _when_last(i: FeatureInfo, r: Reading) -> tuple[str, Quoted]:
    """', 13 months ago on 2024-05-18': when the latest event of the type came (its value may be old)."""
    days = r.sibling(i, "days_since_last")
    if days is None:
        return "", {}
    words, when = ago(days)
    day, date = on_date(r, days)
    return f", {words}" + (f" on {day}" if day else ""), when | date


def amount_last(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.singular} yet", {})
    when, dated = _when_last(i, r)
    when = f"{when}," if when else ""
    return Fact(f"The latest {i.singular}{when} was {format_number(x)}{_value_in(i)}", {"value": x} | dated)


def amount_total(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name) or 0.0
    if x == 0 and not r.sibling(i, "count_total"):
        return Fact(f"No {i.plural} yet", {})
    return Fact(f"{cap(i.plural)} totalled {format_number(x)}{_value_in(i)} since the account started",
                {"total": x})  # fmt: skip


def score_last(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.value_label} given yet", {})
    text, values = score_phrase(i, x)
    days = r.sibling(i, "days_since_last_score")
    if days is None:
        return Fact(f"Latest {i.value_label}: {text}", values)
    words, when = ago(days)
    day, date = on_date(r, days)
    return Fact(f"Latest {i.value_label}: {text}" + (f" on {day}" if day else "") + f", {words}",
                values | when | date)  # fmt: skip


def score_age(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    if x is None:
        return None  # said by the latest score's sentence ("No NPS given yet")
    words, values = ago(x)
    day, date = on_date(r, x)
    return Fact(
        f"The latest {i.value_label} was given {words}" + (f", on {day}" if day else ""), values | date
    )


def score_mean(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.value_label} given in the last {i.window} days", {})
    high = i.scale[1] if i.scale else None
    of = f" of {format_number(high)}" if high is not None else ""
    values = {"mean": x} | ({"scale_high": high} if high is not None else {})
    return Fact(f"{cap(i.value_label)} averaged {format_number(x)}{of} in the last {i.window} days", values)


def score_min(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.value_label} given in the last {LOOKBACK} days", {})
    text, values = score_phrase(i, x)
    return Fact(f"Lowest {i.value_label} in the last {LOOKBACK} days: {text}", values)


def net(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name) or 0.0
    if i.window is not None:
        empty = _no_events_in_window(i, r)
        if empty:
            return empty
        period = f"in the last {i.window} days"
    else:
        if not r.sibling(i, "count_total"):
            return Fact(f"No {i.plural} yet", {})
        period = "since the account started"
    if x == 0:
        return Fact(f"No net change in {i.value_label} {period}", {})
    return Fact(f"{signed_change(i, x)} (net) {period}", {"net": abs(x)})


def last_change(i: FeatureInfo, r: Reading) -> Fact:
    x = r.num(i.name)
    if x is None:
        return Fact(f"No {i.singular} yet", {})
    if x == 0:
        return Fact(f"No change in {i.value_label} in the latest {i.singular}", {})
    when, dated = _when_last(i, r)
    return Fact(f"{signed_change(i, x)} in the latest change{when}", {"change": abs(x)} | dated)


def distinct(i: FeatureInfo, r: Reading) -> Fact:
    n = r.num(i.name) or 0.0
    period = f"in the last {i.window} days" if i.window else "since the account started"
    if n == 0:
        return Fact(
            f"No {i.plural} {period}" if i.window else f"No {i.plural} yet",
            {"count": 0.0} if i.window else {},
        )
    if n == 1:  # "1 different features" is not English, whatever the spec's plural phrase
        return Fact(f"{cap(i.distinct)} {period}: 1", {"count": n})
    return Fact(f"{format_number(n)} {i.distinct} {period}", {"count": n})


# --------------------------------------------------------------------------------- account sentences


def tenure(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    return None if x is None else Fact(f"The account is {format_number(x)} days old", {"days": x})


def account_active_days(i: FeatureInfo, r: Reading) -> Fact:
    n = r.num(i.name) or 0.0
    if n == 0:
        return Fact(f"No activity in the last {TREND} days", {"days": 0.0})
    return Fact(f"Active on {format_number(n)} of the last {TREND} days", {"days": n})


def active_users(i: FeatureInfo, r: Reading) -> Fact:
    n = r.num(i.name) or 0.0
    if n == 0:
        return Fact(f"No active users in the last {TREND} days", {"users": 0.0})
    return Fact(
        f"{format_number(n)} active user{'' if n == 1 else 's'} in the last {TREND} days", {"users": n}
    )


def mrr(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    return None if x is None else Fact(f"MRR is {format_number(x)}", {"mrr": x})


def mrr_change(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    if x is None:
        return None
    if x == 0:
        return Fact("MRR unchanged over the last 90 days", {})
    verb = "fell" if x < 0 else "rose"
    return Fact(f"MRR {verb} by {format_number(abs(x))} over the last 90 days", {"change": abs(x)})


def seats(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    return (
        None if x is None else Fact(f"{format_number(x)} seat{'' if x == 1 else 's'} purchased", {"seats": x})
    )


def seats_used(i: FeatureInfo, r: Reading) -> Fact | None:
    x, seats = r.num(i.name), r.num("seats")
    if x is None or seats is None:
        return None
    users = r.num("active_users_30d") or 0.0
    pct = round(100 * x)
    who = "active user" if users == 1 else "active users"
    return Fact(
        f"{format_number(pct)}% of seats in use ({format_number(users)} {who} for {format_number(seats)} "
        f"seat{'' if seats == 1 else 's'})",
        {"percent": float(pct), "users": users, "seats": seats},
    )


def renewal(i: FeatureInfo, r: Reading) -> Fact | None:
    x = r.num(i.name)
    return None if x is None else Fact(f"Renewal in {format_number(x)} days", {"days": x})


def labelled(i: FeatureInfo, r: Reading) -> Fact | None:
    """'Industry: finance', 'Plan: team', 'Household size: 3'; nothing when missing."""
    raw = r.raw(i.name)
    if raw is None or (isinstance(raw, float) and raw != raw):
        return None
    if isinstance(raw, str):
        return Fact(f"{cap(i.label)}: {raw}", {"value": raw})
    x = r.num(i.name)
    return None if x is None else Fact(f"{cap(i.label)}: {format_number(x)}", {"value": x})
