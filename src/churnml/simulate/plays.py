"""CSM plays in the simulator: who is called each month, who is held out, and what a call truly does.

Each month, before the churn decisions, the accounts with the highest true churn probability (a
``call_share`` of those at risk, among accounts with at least one active driver) make the call list.
Each gets the play for its *primary driver* (the driver adding most to its churn logit), as a playbook
would suggest. A share of them (``holdout_share``) is held out by the same hash of customer and month
the product uses (:func:`churnml.impact.holdout.holdout_draw`), so no random draw is added. A treated
account's churn logit loses, for that month, a fraction of each driver's contribution given by the
play's ``effects``: an onboarding session removes most of what an unfinished onboarding adds and
does nothing for a failed payment.

The ground truth (``plays.parquet``) records, for every account on the call list, both arms' monthly
churn probabilities and the true effect (their difference), and both potential outcomes of the month's
churn decision (the same uniform draw compared with each probability), whichever arm it was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnml.impact.holdout import holdout_draw

__all__ = ["PLAYS", "MonthPlays", "Play", "effect_matrix", "plan_month", "plays_frame", "plays_frame_empty"]


@dataclass(frozen=True)
class Play:
    """A play, the driver whose accounts get it, and the share of each driver's contribution it removes."""

    name: str
    for_driver: str
    effects: dict[str, float] = field(default_factory=dict)


# Effects do not follow risk: a play fixes what a CSM can fix. An unfinished onboarding or a bad support
# experience responds well to a call; an account whose use has been falling for months, or whose card
# failed, is mostly past what a call can change, though these are the riskiest accounts (Ascarza, 2018).
PLAYS: tuple[Play, ...] = (
    Play(
        "Onboarding session",
        "incomplete_onboarding",
        {"incomplete_onboarding": 0.9, "engagement_decline": 0.3},
    ),
    Play("Support escalation", "support_friction", {"support_friction": 0.7, "detractor_nps": 0.2}),
    Play("Executive check-in", "detractor_nps", {"detractor_nps": 0.5}),
    Play("Usage review and training", "engagement_decline", {"engagement_decline": 0.05}),
    Play("Seat planning call", "seat_contraction", {"seat_contraction": 0.2}),
    Play("Billing follow-up", "failed_payment", {"failed_payment": 0.05}),
)


def effect_matrix(drivers: list[str]) -> np.ndarray:
    """plays × drivers: the share of each driver's contribution each play removes (checked names)."""
    out = np.zeros((len(PLAYS), len(drivers)))
    for k, play in enumerate(PLAYS):
        for driver, share in play.effects.items():
            if driver not in drivers or not 0 <= share <= 1:
                raise ValueError(
                    f"play {play.name!r}: effect on {driver!r} must name a driver and lie in [0, 1]"
                )
            out[k, drivers.index(driver)] = share
    return out


@dataclass
class MonthPlays:
    """One month's call list: local account indices, play, arm and both arms' churn logits."""

    local: np.ndarray
    play: np.ndarray  # index into PLAYS
    control: np.ndarray  # held out
    logit_untreated: np.ndarray
    logit_treated: np.ndarray


def plan_month(
    ids: np.ndarray, period: str, at_risk: np.ndarray, drivers: np.ndarray, weights: np.ndarray,
    logit: np.ndarray, call_share: float, holdout_share: float, driver_names: list[str],
) -> MonthPlays:  # fmt: skip
    """The month's call list, plays and holdout; the caller lowers the treated accounts' logits."""
    contrib = drivers[at_risk] * weights
    has_driver = contrib.max(axis=1) > 0
    candidates = at_risk[has_driver]
    n_calls = int(round(call_share * len(at_risk)))
    order = np.argsort(-logit[candidates], kind="stable")[:n_calls]
    local = np.sort(candidates[order])
    primary = (drivers[local] * weights).argmax(axis=1)
    play_of_driver = np.array([[p.for_driver for p in PLAYS].index(d) for d in driver_names])
    play = play_of_driver[primary]
    removed = (effect_matrix(driver_names)[play] * drivers[local] * weights).sum(axis=1)
    control = holdout_draw(ids[local], period) < holdout_share
    return MonthPlays(local, play, control, logit[local].copy(), logit[local] - removed)


def plays_frame(month: MonthPlays, uniform: np.ndarray, lapse_share: float) -> pd.DataFrame:
    """The ground truth rows of one month (``uniform``: each listed account's churn-decision draw)."""

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    p0, p1 = sigmoid(month.logit_untreated), sigmoid(month.logit_treated)
    return pd.DataFrame({
        "local": month.local, "play": np.array([p.name for p in PLAYS])[month.play],
        "arm": np.where(month.control, "control", "treated"),
        "churn_probability_untreated": (1 - lapse_share) * p0, "churn_probability_treated": (1 - lapse_share) * p1,
        "true_effect": (1 - lapse_share) * (p0 - p1),
        "decision_if_untreated": uniform < p0, "decision_if_treated": uniform < p1,
    })  # fmt: skip


def plays_frame_empty() -> pd.DataFrame:
    """The ground truth's columns when no account was ever called (a tiny simulation)."""
    empty = MonthPlays(*(np.zeros(0, dtype=t) for t in (np.int64, np.int64, bool, float, float)))
    return plays_frame(empty, np.zeros(0), 0.0).assign(month=pd.Series(dtype="float64"))
