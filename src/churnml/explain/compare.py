"""An account's value against accounts that stayed: is it unusual, and in which direction?

The position of a value among retained accounts (`churnml.features.reference`) is the share of them
below it, plus half the ties. Oriented by what a higher value means (the family's ``higher``), it
becomes the share of retained accounts that look safer: a reason is only called a problem when that
share is at least `UNUSUAL` (the account is riskier than three in four accounts that stayed), so a
normal value is never presented as a problem whatever its SHAP value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from churnml.features.catalogue import FeatureInfo
from churnml.features.reference import ColumnReference
from churnml.features.sentences import format_number

__all__ = ["UNUSUAL", "Comparison", "compare"]

UNUSUAL = 0.75


@dataclass(frozen=True)
class Comparison:
    """Where a value sits among accounts that stayed."""

    percentile: float | None  # share of retained accounts below it (plus half the ties), 0-100
    risk_share: float | None  # share of retained accounts that look safer on this fact, 0-1; None: can't tell
    text: str

    @property
    def unusual_risk(self) -> bool:
        return self.risk_share is not None and self.risk_share >= UNUSUAL

    @property
    def unusual_safety(self) -> bool:
        return self.risk_share is not None and self.risk_share <= 1 - UNUSUAL


def _pct(share: float) -> str:
    return f"{round(100 * share)}%"


def _position_missing(info: FeatureInfo, ref: ColumnReference) -> float | None:
    """A missing value's position: below every value (none at all) or above (never happened)."""
    if info.missing_is == "low":
        return ref.missing / 2
    if info.missing_is == "high":
        return 1 - ref.missing / 2
    return None


def compare(info: FeatureInfo, ref: ColumnReference | None, value: object) -> Comparison | None:
    """The comparison of ``value`` (of column ``info``) with the retained accounts; None without one."""
    if ref is None:
        return None
    if info.categorical:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        share = ref.level_share(str(value))
        return (
            None
            if share is None
            else Comparison(None, None, f"{_pct(share)} of accounts that stayed share it")
        )
    x = None if value is None or isinstance(value, str) else float(value)  # type: ignore[arg-type]
    if x is None or math.isnan(x):
        position = _position_missing(info, ref)
        text = f"{_pct(1 - ref.missing)} of accounts that stayed have one"
    else:
        below, above = ref.shares(x)
        have = 1 - ref.missing
        ties = max(0.0, 1 - below - above)
        position = below + ties / 2
        if info.missing_is == "low":
            position = ref.missing + have * position
        elif info.missing_is == "high":
            position = have * position
        text = _text(info, ref, below, above)
    return Comparison(None if position is None else round(100 * position, 1), _risk(info, position), text)


def _risk(info: FeatureInfo, position: float | None) -> float | None:
    if position is None:
        return None
    if info.higher == "riskier":
        return position
    if info.higher == "safer":
        return 1 - position
    if info.group == "table":  # a ready table's column: no known direction, so unusual either way
        return max(position, 1 - position)
    return None


def _text(info: FeatureInfo, ref: ColumnReference, below: float, above: float) -> str:
    median = ref.median
    typical = "" if median is None or info.unit == "ratio" else f" (median {format_number(median)})"
    if below >= 0.5:
        return f"higher than {_pct(below)} of accounts that stayed{typical}"
    if above >= 0.5:
        return f"lower than {_pct(above)} of accounts that stayed{typical}"
    return f"typical of accounts that stayed{typical}"
