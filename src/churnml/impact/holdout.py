"""Which accounts on the call list are held out as a control group, and why it is a hash, not a draw.

A control group only measures a play if nothing about the account decides who is in it: the choice is
a hash of the customer id and the campaign period, mapped to [0, 1) and compared with the share held
out. That makes it random with respect to everything the model or a CSM sees, reproducible (a
re-score in the same period gives the same groups, so a CSM never sees an account flip between "call"
and "do not contact"), and fresh each period (an account is not a control forever).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "CONTROL",
    "TREATED",
    "HoldoutPolicy",
    "campaign_period",
    "holdout_draw",
    "mark_holdouts",
]

CONTROL = "control"  # held out: do not contact
TREATED = "treated"  # on the call list as usual
MAX_SHARE = 0.5  # beyond half, the "control" group is the call list


@dataclass(frozen=True)
class HoldoutPolicy:
    """The share of eligible accounts held out each campaign period; 0 turns holdouts off."""

    share: float = 0.1
    eligible_tiers: tuple[str, ...] = ("high", "medium")

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= MAX_SHARE:
            raise ValueError(f"holdout_share: expected a share between 0 and {MAX_SHARE}, got {self.share}")

    @property
    def enabled(self) -> bool:
        return self.share > 0


def campaign_period(as_of: pd.Timestamp) -> str:
    """The campaign a score belongs to: its calendar month ('2025-07'); scores in one month share groups."""
    return f"{pd.Timestamp(as_of):%Y-%m}"


def holdout_draw(customer_ids: np.ndarray | list[str], period: str) -> np.ndarray:
    """A number in [0, 1) per account, fixed by the customer id and the period (SHA-256, first 8 bytes)."""
    out = np.empty(len(customer_ids), dtype=np.float64)
    for i, cid in enumerate(customer_ids):
        digest = hashlib.sha256(f"{cid}\x1f{period}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def mark_holdouts(scores: pd.DataFrame, period: str, policy: HoldoutPolicy) -> pd.DataFrame:
    """The scores with ``holdout_arm`` (control / treated; None when not eligible or holdouts are off)
    and ``holdout_probability`` (the chance of being held out that the assignment used)."""
    out = scores.copy()
    eligible = out["risk_tier"].isin(policy.eligible_tiers).to_numpy() & policy.enabled
    draw = holdout_draw(out["customer_id"].astype(str).to_numpy(), period)
    arm = np.where(draw < policy.share, CONTROL, TREATED).astype(object)
    arm[~eligible] = None
    out["holdout_arm"] = arm
    out["holdout_probability"] = np.where(eligible, policy.share, np.nan)
    out["campaign_period"] = period
    return out
