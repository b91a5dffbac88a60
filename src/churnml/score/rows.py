"""One scored row: calibrated probability, health score, risk tier, revenue at risk, reasons with plays.

Shared by the online endpoint, batch scoring and the Spark partitions, so the API and the account page
say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnml.explain import DEFAULT_PLAYBOOK, AccountReasons, Explainer, Playbook
from churnml.model import ChurnModel

__all__ = ["DAYS_PER_MONTH", "DEFAULT_POLICY", "RiskPolicy", "explain_scored", "health_score", "revenue_at_risk",
           "score_features", "top_play", "with_expected_saving"]  # fmt: skip

DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class RiskPolicy:
    """Probability cut-offs of the risk tiers (churn within the model's horizon)."""

    high: float = 0.5
    medium: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.medium < self.high < 1:
            raise ValueError(
                f"risk tiers: need 0 < medium < high < 1, got medium={self.medium}, high={self.high}"
            )

    def tiers(self, probability: np.ndarray) -> np.ndarray:
        p = np.asarray(probability, float)
        return np.where(p >= self.high, "high", np.where(p >= self.medium, "medium", "low"))


DEFAULT_POLICY = RiskPolicy()


def with_expected_saving(scored: pd.DataFrame, uplift: np.ndarray, horizon_days: int) -> pd.DataFrame:
    """``uplift`` (the fall in churn probability a play would bring) and ``expected_revenue_saved``
    (uplift × MRR × months in the horizon): what calling the account is worth, not what is at risk."""
    return scored.assign(
        uplift=uplift, expected_revenue_saved=revenue_at_risk(uplift, scored["mrr"], horizon_days)
    )


def top_play(account: AccountReasons) -> str | None:
    """The play an account is assigned: its top problem's, if it needs action (the call list's, the
    holdouts' and the uplift's play)."""
    return account.problems[0].play if account.action_needed and account.problems else None


def health_score(probability: np.ndarray) -> np.ndarray:
    """0-100, higher is healthier: the calibrated chance of staying, in percent."""
    return np.rint(100 * (1 - np.asarray(probability, float))).astype(int)


def revenue_at_risk(probability: np.ndarray, mrr: np.ndarray, horizon_days: int) -> np.ndarray:
    """Expected revenue lost within the horizon: probability × MRR × months in the horizon."""
    mrr = np.nan_to_num(np.asarray(mrr, float), nan=0.0)
    return np.asarray(probability, float) * mrr * (horizon_days / DAYS_PER_MONTH)


def score_features(
    model: ChurnModel, features: pd.DataFrame, policy: RiskPolicy = DEFAULT_POLICY, num_threads: int = 1
) -> pd.DataFrame:
    """probability, health_score, risk_tier, mrr, revenue_at_risk for each feature row (same index)."""
    p = model.predict_proba(features, num_threads=num_threads)
    mrr = (
        pd.to_numeric(features["mrr"], errors="coerce").to_numpy(float)
        if "mrr" in features
        else np.zeros(len(p))
    )
    return pd.DataFrame(
        {
            "probability": p,
            "health_score": health_score(p),
            "risk_tier": policy.tiers(p),
            "mrr": mrr,
            "revenue_at_risk": revenue_at_risk(p, mrr, model.horizon_days),
        },
        index=features.index,
    )


def explain_scored(
    model: ChurnModel, features: pd.DataFrame, scored: pd.DataFrame, k: int, playbook: Playbook = DEFAULT_PLAYBOOK,
    num_threads: int = 1, contributions: np.ndarray | None = None,
) -> list[AccountReasons]:  # fmt: skip
    """Each scored row's reasons: problems with plays (accounts below the medium tier need no action),
    protective factors and context (`churnml.explain`)."""
    contrib = contributions if contributions is not None else model.contributions(features, num_threads)[0]
    explainer = Explainer(model.catalogue, model.reference, playbook)
    return explainer.explain(features, contrib, (scored["risk_tier"] != "low").to_numpy(), k)
