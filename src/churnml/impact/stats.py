"""Save rates treated against control: the difference, its 95% interval and what the sample can detect.

The interval is Agresti and Caffo's (2000) for a difference of proportions: one success and one
failure are added to each group before the Wald formula. It keeps close to 95% coverage with the
small groups a first campaign gives, and does not collapse to zero width when a group saved everyone.
The minimum detectable effect is the usual two-sided test at 5% with 80% power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["Comparison", "TOO_EARLY", "compare_save_rates", "minimum_detectable_effect"]

Z_95 = NormalDist().inv_cdf(0.975)
Z_POWER = NormalDist().inv_cdf(0.80)
TOO_EARLY = "too early to tell"


def minimum_detectable_effect(rate: float, treated: int, control: int) -> float:
    """The smallest difference of save rates a test at 5% finds 80% of the time with these group sizes."""
    if treated == 0 or control == 0:
        return math.inf
    rate = min(max(rate, 1e-3), 1 - 1e-3)  # a pooled rate of 0 or 1 still has sampling variance ahead
    return (Z_95 + Z_POWER) * math.sqrt(rate * (1 - rate) * (1 / treated + 1 / control))


@dataclass(frozen=True)
class Comparison:
    """Treated against control: counts, save rates, the effect with its interval, and the verdict."""

    treated: int
    control: int
    treated_saved: int
    control_saved: int
    effect: float  # treated save rate - control save rate (NaN when a group is empty)
    low: float
    high: float
    mde: float
    verdict: str

    @property
    def treated_rate(self) -> float:
        return self.treated_saved / self.treated if self.treated else math.nan

    @property
    def control_rate(self) -> float:
        return self.control_saved / self.control if self.control else math.nan

    @property
    def measurable(self) -> bool:
        return self.verdict != TOO_EARLY


def _verdict(low: float, high: float, mde: float, min_effect: float) -> str:
    if low > 0:
        return "the plays save accounts"
    if high < 0:
        return "the plays lose accounts"
    if mde > min_effect:
        return TOO_EARLY
    return f"no effect as large as {min_effect * 100:.0f} points"


def compare_save_rates(
    treated: int, treated_saved: int, control: int, control_saved: int, min_effect: float = 0.05
) -> Comparison:
    """Compare the groups; "too early to tell" while the interval spans zero and the sample could not
    yet detect an effect of ``min_effect`` (the smallest lift in save rate worth acting on)."""
    for name, saved, n in (("treated", treated_saved, treated), ("control", control_saved, control)):
        if n < 0 or not 0 <= saved <= n:
            raise ValueError(f"{name}: saved must be between 0 and the group size {n}, got {saved}")
    if treated == 0 or control == 0:
        nan = math.nan
        return Comparison(treated, control, treated_saved, control_saved, nan, nan, nan, math.inf, TOO_EARLY)
    effect = treated_saved / treated - control_saved / control
    pt, pc = (treated_saved + 1) / (treated + 2), (control_saved + 1) / (control + 2)
    half = Z_95 * math.sqrt(pt * (1 - pt) / (treated + 2) + pc * (1 - pc) / (control + 2))
    low, high = pt - pc - half, pt - pc + half
    mde = minimum_detectable_effect((treated_saved + control_saved) / (treated + control), treated, control)
    return Comparison(
        treated,
        control,
        treated_saved,
        control_saved,
        effect,
        low,
        high,
        mde,
        _verdict(low, high, mde, min_effect),
    )
