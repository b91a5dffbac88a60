"""How much each play lowers churn, relative to not calling, measured by the randomised holdout.

Each account on a call list gets one play (the play for its top reason), and plays differ far more from
one another than accounts with the same play do: on the simulator an onboarding session removes about
two thirds of its accounts' churn and a billing follow-up a fifteenth. The holdout measures each play
directly, without a model: the churn rate of its treated accounts over that of its held-out ones.

The effect is kept as a *relative* reduction of churn, ``1 - risk ratio``, because a call can only
save an account that would have left: the same play takes more points off a risky account than a safe
one. The log risk ratio of each play (0.5 added to each count, so an arm without a churner still gives
a finite estimate) is shrunk toward the precision-weighted mean of all plays by empirical Bayes
(DerSimonian and Laird's between-play variance): a play with a few dozen held-out accounts borrows
from the others, one with hundreds keeps its own estimate. A play never seen in learning, or with an
empty arm, gets that mean, the effect of a typical play.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

__all__ = ["PlayEffect", "PlayEffects", "estimate_play_effects"]


@dataclass(frozen=True)
class PlayEffect:
    """One play's counts in each arm and its relative reduction of churn, raw and shrunk."""

    play: str
    treated: int
    treated_churned: int
    control: int
    control_churned: int
    log_risk_ratio: float  # raw: log(churn rate treated / churn rate held out), NaN if an arm is empty
    variance: float  # of the raw log risk ratio (delta method), inf if an arm is empty
    shrunk_log_risk_ratio: float

    @property
    def relative_reduction(self) -> float:
        """The share of its accounts' churn the play removes (negative: the play loses accounts)."""
        return 1.0 - math.exp(self.shrunk_log_risk_ratio)


@dataclass(frozen=True)
class PlayEffects:
    """Every learnt play's effect, and the mean effect that a play never seen in learning gets."""

    plays: dict[str, PlayEffect] = field(default_factory=dict)
    mean_log_risk_ratio: float = 0.0
    between_play_variance: float = 0.0

    @property
    def mean_relative_reduction(self) -> float:
        return 1.0 - math.exp(self.mean_log_risk_ratio)

    def relative_reduction(self, plays: np.ndarray | pd.Series) -> np.ndarray:
        """Each account's play's relative reduction; an unknown or missing play gets the mean one."""
        known = {name: p.relative_reduction for name, p in self.plays.items()}
        fallback = self.mean_relative_reduction
        return np.array([known.get(p, fallback) if isinstance(p, str) else fallback for p in plays], float)

    def to_dict(self) -> dict:
        """Plain JSON (a play without an estimate has null for its log risk ratio and variance)."""

        def finite(row: dict) -> dict:
            return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}

        return {
            "plays": [finite(asdict(p)) for p in self.plays.values()],
            "mean_log_risk_ratio": self.mean_log_risk_ratio,
            "between_play_variance": self.between_play_variance,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PlayEffects:
        missing = {"log_risk_ratio": math.nan, "variance": math.inf, "shrunk_log_risk_ratio": math.nan}
        plays = {
            p["play"]: PlayEffect(**{k: missing[k] if v is None else v for k, v in p.items()})
            for p in data["plays"]
        }
        return cls(plays, float(data["mean_log_risk_ratio"]), float(data["between_play_variance"]))


def _raw(play: str, treated: np.ndarray, churned: np.ndarray) -> PlayEffect:
    n_t, n_c = int(treated.sum()), int((~treated).sum())
    y_t, y_c = int(churned[treated].sum()), int(churned[~treated].sum())
    if n_t == 0 or n_c == 0:
        return PlayEffect(play, n_t, y_t, n_c, y_c, math.nan, math.inf, math.nan)
    # 0.5 added to churners and stayers of each arm: finite when an arm has no churner (or no stayer)
    p_t, p_c = (y_t + 0.5) / (n_t + 1), (y_c + 0.5) / (n_c + 1)
    variance = (1 - p_t) / ((n_t + 1) * p_t) + (1 - p_c) / ((n_c + 1) * p_c)
    return PlayEffect(play, n_t, y_t, n_c, y_c, math.log(p_t / p_c), variance, math.nan)


def _between_play_variance(estimates: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """DerSimonian-Laird: the precision-weighted mean and the variance of the true effects around it."""
    w = 1 / variances
    mean = float((w * estimates).sum() / w.sum())
    q = float((w * (estimates - mean) ** 2).sum())
    scale = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (len(estimates) - 1)) / scale) if scale > 0 else 0.0
    return mean, tau2


def estimate_play_effects(
    play: np.ndarray | pd.Series, treated: np.ndarray, churned: np.ndarray
) -> PlayEffects:
    """Each play's relative reduction of churn, treated against held out, shrunk toward the mean play."""
    play = pd.Series(play).astype(object).to_numpy()
    treated, churned = np.asarray(treated, bool), np.asarray(churned, bool)
    if not len(play) == len(treated) == len(churned):
        raise ValueError(
            f"play effects: {len(play)} plays, {len(treated)} treatment flags and {len(churned)} outcomes"
        )
    named = np.array([isinstance(p, str) for p in play], bool)
    raw = [_raw(p, treated[play == p], churned[play == p]) for p in sorted(set(play[named]))]
    usable = [p for p in raw if math.isfinite(p.variance)]
    if not usable:  # no play has both arms: the pooled comparison is the only measure there is
        pooled = _raw("all plays", treated, churned)
        if not math.isfinite(pooled.variance):
            raise ValueError("play effects: need treated and held-out accounts, one arm is empty")
        usable_mean, tau2 = pooled.log_risk_ratio, 0.0
    else:
        estimates = np.array([p.log_risk_ratio for p in usable])
        variances = np.array([p.variance for p in usable])
        usable_mean, tau2 = _between_play_variance(estimates, variances)

    def shrunk(p: PlayEffect) -> float:
        if not math.isfinite(p.variance):
            return usable_mean
        return (tau2 * p.log_risk_ratio + p.variance * usable_mean) / (tau2 + p.variance)

    plays = {p.play: PlayEffect(**{**asdict(p), "shrunk_log_risk_ratio": shrunk(p)}) for p in raw}
    return PlayEffects(plays, usable_mean, tau2)
