"""The words reasons are made of: numbers, ages, dates, scores and signed changes, said one way.

A sentence is a `Fact`: its text and every number (or date) the text quotes, so a client can check
that the words and the data agree. Sentence templates live with their families (`definitions`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from churnml.features.catalogue import FeatureInfo

__all__ = [
    "Fact",
    "Reading",
    "ago",
    "cap",
    "format_number",
    "noun",
    "on_date",
    "score_phrase",
    "signed_change",
]

Quoted = dict[str, float | str | None]


@dataclass(frozen=True)
class Fact:
    """A sentence and the numbers it quotes; ``reassuring`` when its words say all is well ("within the
    usual gap", "logins rose"), which a reason that raises risk must not be stated by."""

    text: str
    values: Quoted = field(default_factory=dict)
    reassuring: bool = False


@dataclass(frozen=True)
class Reading:
    """One account's feature values, as of its date (dates in sentences count back from it)."""

    row: Mapping[str, object]
    as_of: pd.Timestamp | None = None

    def raw(self, name: str) -> object:
        return self.row.get(name)

    def num(self, name: str) -> float | None:
        """The value as a number; None when missing, NaN or not a number."""
        return as_number(self.row.get(name))

    def sibling(self, info: FeatureInfo, key: str, window: int | None = None) -> float | None:
        """Another family's value for the same event type ("the count in 30 days" beside a trend)."""
        return self.num(info.sibling(key, window))


def as_number(value: object) -> float | None:
    """A feature value as a number: None when missing, NaN, text or a flag, so "unknown" is never a 0."""
    if value is None or isinstance(value, str | bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def format_number(x: float) -> str:
    """How sentences print numbers: whole numbers plainly with thousands commas, others rounded to a
    whole number from 10 up and to one decimal below."""
    if not math.isfinite(x):
        return "unknown"
    if abs(x - round(x)) < 1e-9 or abs(x) >= 10:
        return f"{int(round(x)) + 0:,}"  # + 0: -0 prints as 0
    text = f"{x:.1f}"
    return "0" if text in ("0.0", "-0.0") else text


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def noun(info: FeatureInfo, n: float) -> str:
    return info.singular if n == 1 else info.plural


def ago(days: float) -> tuple[str, Quoted]:
    """'3 days ago', '13 months ago', '2.1 years ago', and the number quoted."""
    if days < 60:
        d = float(round(days))
        return f"{format_number(d)} day{'' if d == 1 else 's'} ago", {"days": d}
    if days < 730:
        m = float(round(days / (365.25 / 12)))
        return f"{format_number(m)} months ago", {"months": m}
    y = round(days / 365.25, 1)
    return f"{format_number(y)} years ago", {"years": y}


def on_date(r: Reading, days: float) -> tuple[str | None, Quoted]:
    """The date ``days`` before the reading's date ('2024-05-18'), and it quoted; None without a date."""
    if r.as_of is None:
        return None, {}
    day = (pd.Timestamp(r.as_of) - pd.Timedelta(days=float(days))).date().isoformat()
    return day, {"date": day}


def score_phrase(info: FeatureInfo, x: float) -> tuple[str, Quoted]:
    """'4 of 10 (detractor)': the score, its scale's top and its band."""
    values: Quoted = {"score": x}
    text = format_number(x)
    if info.scale:
        text += f" of {format_number(info.scale[1])}"
        values["scale_high"] = float(info.scale[1])
    band = info.band(x)
    return (f"{text} ({band})" if band else text), values


def signed_change(info: FeatureInfo, x: float) -> str:
    """'5 seats removed', '1 seat added', '30 of MRR lost to downgrades'."""
    unit = info.unit_word
    if abs(x) == 1 and " " not in unit and unit.endswith("s"):  # "1 seat": a one-word plural unit
        unit = unit[:-1]
    return f"{format_number(abs(x))} {unit} {info.up if x > 0 else info.down}"
