"""What to simulate (`SimulationConfig`), and what a simulation wrote (`SimulationSummary`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from churnml.simulate.world import CONCEPT_DRIFT_WEIGHTS, DRIVERS

__all__ = ["SimulationConfig", "SimulationSummary"]


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``drift`` starts a scenario at month ``drift_month`` (0 = the first month):

    - ``covariate``: half the accounts that sign up from then on take a new plan, *growth*, and use the
      product differently (twice the engagement, half the support tickets); churn still follows the same
      drivers with the same weights, so only who is scored changes;
    - ``concept``: the drivers' weights change (`CONCEPT_DRIFT_WEIGHTS`): the same behaviour now means
      another risk.

    Without ``drift`` the output is the same as before scenarios existed (no extra random draws).

    ``plays`` switches on CSM plays (:mod:`churnml.simulate.plays`): each month the ``call_share`` of
    at-risk accounts with the highest churn probability is called, a ``holdout_share`` of them held out,
    and ``plays.parquet`` records the true effects. Off by default, and then the output is unchanged.
    """

    customers: int = 2_000
    months: int = 18
    seed: int = 0
    start: dt.date = dt.date(2024, 1, 1)
    founding_share: float = 0.3  # accounts that exist from the first month
    drift: str | None = None  # None | "covariate" | "concept"
    drift_month: int = 12
    plays: bool = False
    call_share: float = 0.25  # of the accounts at risk each month, called (with plays)
    holdout_share: float = 0.1  # of the call list, held out (with plays)

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ValueError(f"customers must be >= 1, got {self.customers}")
        if not 3 <= self.months <= 120:
            raise ValueError(f"months must be between 3 and 120, got {self.months}")
        if self.drift not in (None, "covariate", "concept"):
            raise ValueError(f"drift must be 'covariate' or 'concept', got {self.drift!r}")
        if self.drift and not 1 <= self.drift_month < self.months:
            raise ValueError(f"drift_month must be between 1 and {self.months - 1}, got {self.drift_month}")
        if self.plays and not 0 < self.call_share <= 1:
            raise ValueError(f"call_share must be in (0, 1], got {self.call_share}")
        if self.plays and not 0 < self.holdout_share < 1:
            raise ValueError(f"holdout_share must be in (0, 1), got {self.holdout_share}")

    def weights(self, month: int) -> np.ndarray:
        """The drivers' weights on the monthly churn logit in ``month``."""
        if self.drift == "concept" and month >= self.drift_month:
            return np.array([CONCEPT_DRIFT_WEIGHTS[k] for k in DRIVERS])
        return np.array([w for w, _ in DRIVERS.values()])


@dataclass(frozen=True)
class SimulationSummary:
    out_dir: Path
    customers: int
    events: int
    subscriptions: int
    churners: int
    files: dict[str, Path] = field(default_factory=dict)
