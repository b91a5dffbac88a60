"""Impact as the CLI and the overview show it: save rates, revenue kept overall and per play, ROI.

Revenue kept by the plays is the difference of save rates (treated minus control) times the revenue
the treated accounts stood to lose over the horizon (MRR × months): what calling them kept beyond what
they would have kept anyway. It carries the same 95% interval, scaled. ROI divides what was kept,
less the plays' cost, by that cost.

The comparison is by assignment (intent to treat): an account on the call list counts as called
whether or not a CSM reached it, so the difference is what putting accounts on the list achieved. The
activity log says how many calls were made: the treated accounts with a play logged done within the
horizon, and the held-out ones logged too (contacted although held out, which dilutes the difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from churnml.impact.holdout import CONTROL, TREATED
from churnml.impact.stats import Comparison, compare_save_rates

__all__ = ["NO_PLAY", "OUTCOME_COLUMNS", "ImpactReport", "PlayImpact", "impact_report", "report_rows"]

NO_PLAY = "(no play suggested)"
OUTCOME_COLUMNS = ["customer_id", "period", "arm", "play", "mrr", "churned", "horizon_months"]


@dataclass(frozen=True)
class PlayImpact:
    """One play's (or all plays') comparison and what it kept."""

    play: str
    comparison: Comparison
    revenue_at_stake: float  # treated accounts' MRR × horizon months
    revenue_kept: float
    revenue_kept_low: float
    revenue_kept_high: float
    cost: float | None  # None: no cost per play configured
    roi: float | None
    # accounts with a play logged done in the activity log within the horizon: of the treated (how many
    # calls were made), and of the held out (contacted although held out: they dilute the difference)
    treated_logged: int = 0
    control_logged: int = 0

    @property
    def verdict(self) -> str:
        return self.comparison.verdict


@dataclass(frozen=True)
class ImpactReport:
    """Overall and per play, plus how many assignments still wait for their horizon to pass."""

    overall: PlayImpact
    plays: list[PlayImpact] = field(default_factory=list)
    pending: int = 0
    holdout_share: float = 0.0

    @property
    def holdouts_enabled(self) -> bool:
        return self.holdout_share > 0


def _play_impact(name: str, rows: pd.DataFrame, play_cost: float | None, min_effect: float) -> PlayImpact:
    treated, control = rows[rows["arm"] == TREATED], rows[rows["arm"] == CONTROL]
    comparison = compare_save_rates(
        len(treated), int((~treated["churned"].astype(bool)).sum()),
        len(control), int((~control["churned"].astype(bool)).sum()), min_effect,
    )  # fmt: skip
    stake = float((treated["mrr"].fillna(0.0) * treated["horizon_months"]).sum())
    kept, low, high = (v * stake for v in (comparison.effect, comparison.low, comparison.high))
    cost = None if play_cost is None else play_cost * len(treated)
    roi = (kept - cost) / cost if cost and math.isfinite(kept) else None
    return PlayImpact(name, comparison, stake, kept, low, high, cost, roi,
                      int(treated["logged"].sum()), int(control["logged"].sum()))  # fmt: skip


def impact_report(
    outcomes: pd.DataFrame, pending: int = 0, holdout_share: float = 0.0, play_cost: float | None = None,
    min_effect: float = 0.05,
) -> ImpactReport:  # fmt: skip
    """The report from matured outcomes (one row per assigned account and period: ``OUTCOME_COLUMNS``)."""
    missing = [c for c in OUTCOME_COLUMNS if c not in outcomes.columns]
    if missing:
        raise ValueError(f"outcomes: missing column(s) {', '.join(missing)}")
    unknown = sorted(set(outcomes["arm"]) - {TREATED, CONTROL})
    if unknown:
        raise ValueError(f"outcomes.arm: expected {TREATED} or {CONTROL}, got {unknown[0]!r}")
    if play_cost is not None and play_cost <= 0:
        play_cost = None
    logged = outcomes["logged"].astype(bool) if "logged" in outcomes else False  # without the activity log
    rows = outcomes.assign(play=outcomes["play"].fillna(NO_PLAY), logged=logged)
    plays = [_play_impact(str(p), g, play_cost, min_effect) for p, g in rows.groupby("play", sort=True)]
    overall = _play_impact("all plays", rows, play_cost, min_effect)
    return ImpactReport(overall, plays, pending, holdout_share)


def _percent(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value * 100:.1f}%"


def _points(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value * 100:+.1f} pts"


def _money(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:,.0f}"


def report_rows(report: ImpactReport) -> list[dict[str, str]]:
    """The report as text cells, overall first: what `churnml impact` prints and the overview shows."""
    rows = []
    for p in [report.overall, *report.plays]:
        c = p.comparison
        interval = "–" if not math.isfinite(c.low) else f"{_points(c.low)} to {_points(c.high)}"
        rows.append({
            "play": p.play, "treated": f"{c.treated:,}", "control": f"{c.control:,}",
            "treated_rate": _percent(c.treated_rate), "control_rate": _percent(c.control_rate),
            "effect": _points(c.effect), "interval": interval,
            "mde": "–" if not math.isfinite(c.mde) else f"{c.mde * 100:.1f} pts",
            "revenue_kept": _money(p.revenue_kept),
            "revenue_interval": "–" if not math.isfinite(p.revenue_kept_low)
            else f"{_money(p.revenue_kept_low)} to {_money(p.revenue_kept_high)}",
            "cost": _money(p.cost), "roi": "–" if p.roi is None else f"{p.roi * 100:,.0f}%", "verdict": c.verdict,
            "logged": f"{p.treated_logged:,} of {c.treated:,}", "control_logged": f"{p.control_logged:,}",
        })  # fmt: skip
    return rows
