"""The reason lint: every sentence of a workspace checked for what makes a CSM stop trusting it.

Run over the ``reasons`` table that `churnml score` writes (`churnml.score.reason_records`), with the
model's catalogue. A violation names the account, the sentence and the rule:

- ``sums_identifier``: a sum, mean or latest value of ids or categories ("Total feature id: 31");
- ``doubled_label``: a word of the event's name said twice ("NPS score of NPS answers");
- ``unknown``: "nan", "None", or "unknown" said more than once;
- ``stale_without_date``: a latest score stated without when it was given;
- ``normal_as_problem``: a problem whose value is not unusual on the risky side for accounts that stayed;
- ``play_on_non_problem``: a play on context, on a protective factor, or on an account needing no action;
- ``play_contradicts``: a play whose own conditions do not hold for the facts recorded beside it.

The conditions are re-read here with their own small evaluator, not the playbook's, so the lint does
not share the code it checks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import pandas as pd

from churnml.explain.compare import UNUSUAL
from churnml.features.catalogue import FeatureInfo
from churnml.features.definitions import slug

__all__ = ["Violation", "lint_reasons"]

_STOP = {
    "the",
    "and",
    "for",
    "with",
    "any",
    "last",
    "days",
    "day",
    "since",
    "account",
    "started",
    "latest",
    "from",
}
_SUMMED = {"amount_sum", "amount_mean", "amount_last", "amount_sum_total", "score_last", "score_mean", "score_min",
           "net_change", "net_change_total", "last_change"}  # fmt: skip


@dataclass(frozen=True)
class Violation:
    customer_id: str
    rule: str
    sentence: str
    detail: str


def _words(text: str) -> list[str]:
    return [w.rstrip("s") for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in _STOP]


def _doubled(info: FeatureInfo, sentence: str) -> str | None:
    if info.vocabulary is None:  # account facts name what they count once in their own words
        return None
    vocabulary = " ".join(x for x in (info.plural, info.singular, info.value_label, info.unit_word) if x)
    names = set(_words(vocabulary))
    said = _words(sentence)
    twice = sorted({w for w in said if w in names and said.count(w) > 1})
    return ", ".join(twice) or None


def _holds(condition: str, facts: dict[str, float | None]) -> bool:
    """One condition on recorded facts ('{s}' already replaced by the scorer)."""
    state = re.fullmatch(r"\s*(\S+)\s+is\s+(missing|present)\s*", condition)
    if state:
        value = facts.get(state[1])
        return (value is None) == (state[2] == "missing")
    match = re.fullmatch(r"\s*(\S+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*", condition)
    if not match:
        return False
    left = facts.get(match[1])
    right_text = match[3]
    try:
        right: float | None = float({"true": "1", "false": "0"}.get(right_text.lower(), right_text))
    except ValueError:
        right = facts.get(right_text)
    if left is None or right is None:
        return False
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right,
            "==": left == right, "!=": left != right}[match[2]]  # fmt: skip


def _play_holds(text: str, facts: dict[str, float | None], slug: str) -> bool:
    """``require`` parts joined by ' and ', a ``require_any`` part in parentheses joined by ' or '."""
    text = text.replace("{s}", slug)
    parts = re.split(r"\s+and\s+(?![^()]*\))", text.strip()) if text.strip() else []
    for part in parts:
        if part.startswith("(") and part.endswith(")"):
            if not any(_holds(c, facts) for c in part[1:-1].split(" or ")):
                return False
        elif not _holds(part, facts):
            return False
    return True


def _risk_share(info: FeatureInfo, percentile: float | None) -> float | None:
    if percentile is None or (isinstance(percentile, float) and math.isnan(percentile)):
        return None
    p = percentile / 100
    return {"riskier": p, "safer": 1 - p}.get(info.higher, max(p, 1 - p) if info.group == "table" else None)


def lint_reasons(reasons: pd.DataFrame, catalogue: list[FeatureInfo], action_needed: pd.Series | None = None,
                 with_reference: bool = True) -> list[Violation]:  # fmt: skip
    """Every violation in a reasons table (``action_needed``: per customer id, False below the medium tier)."""
    by_name = {i.name: i for i in catalogue}
    out: list[Violation] = []
    for row in reasons.itertuples(index=False):
        info = by_name.get(row.feature)
        if info is None:
            out.append(Violation(row.customer_id, "unknown_feature", row.sentence, row.feature))
            continue
        for rule, detail in _sentence_rules(info, row.sentence):
            out.append(Violation(row.customer_id, rule, row.sentence, detail))
        for rule, detail in _reason_rules(info, row, action_needed, with_reference):
            out.append(Violation(row.customer_id, rule, row.sentence, detail))
    return out


def _sentence_rules(info: FeatureInfo, sentence: str) -> list[tuple[str, str]]:
    found = []
    if info.meaning in ("identifier", "category") and info.family in _SUMMED:
        found.append(("sums_identifier", f"{info.family} of a {info.meaning}"))
    if re.search(
        r"\b(total|totalled|averaged|sum)\b.*\b(id|ids|identifier|number)\b", sentence, re.IGNORECASE
    ):
        found.append(("sums_identifier", "adds up identifiers"))
    doubled = _doubled(info, sentence)
    if doubled:
        found.append(("doubled_label", doubled))
    if re.search(r"\b(nan|None|NaN)\b", sentence) or sentence.lower().count("unknown") > 1:
        found.append(("unknown", "missing value printed"))
    if info.family == "score_last" and "given yet" not in sentence and "ago" not in sentence:
        found.append(("stale_without_date", "a latest score without its date"))
    return found


def _reason_rules(info: FeatureInfo, row: object, action_needed: pd.Series | None,
                  with_reference: bool) -> list[tuple[str, str]]:  # fmt: skip
    found = []
    kind, play = row.kind, row.play
    if kind == "problem" and with_reference:
        share = _risk_share(info, row.percentile)
        if share is None or share < UNUSUAL:
            found.append(("normal_as_problem", f"riskier than only {share} of accounts that stayed"))
    if play is None or (isinstance(play, float) and math.isnan(play)):
        return found
    needed = True if action_needed is None else bool(action_needed.get(row.customer_id, True))
    if kind != "problem" or info.context or not needed:
        found.append(
            ("play_on_non_problem", f"{play} on a {kind} ({'needs' if needed else 'needs no'} action)")
        )
    facts = json.loads(row.play_facts or "{}")
    if not _play_holds(row.play_condition or "", facts, slug(info.event_type or "")):
        found.append(("play_contradicts", f"{play}: {row.play_condition} with {facts}"))
    return found
