"""What became of each held-out and treated account once its horizon has passed.

An assignment made at a score date has an outcome when that date's churn label has matured (the
horizon, plus the grace period in which a cancellation may still be taken back, lies inside the
data): churned within the horizon or not, and the revenue kept (MRR × horizon months if it stayed,
nothing if it left). Labels come from :func:`churnml.labels.build_labels` at the score dates, the
same labels the model trains on, so "churned" means the same thing in both places.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["matured_outcomes"]

DAYS_PER_MONTH = 365.25 / 12


def matured_outcomes(
    assignments: pd.DataFrame, labels: pd.DataFrame, matured_until: pd.Timestamp
) -> pd.DataFrame:
    """The assignments scored on or before ``matured_until`` (the last date whose whole horizon and
    grace period the data covers), with ``churned`` and ``revenue_kept``. A churn seen early is not
    recorded before the horizon has passed for everyone scored that day: otherwise recent periods
    would show only their churners.

    ``assignments``: customer_id, period, scored_on, mrr, horizon_days (from the store);
    ``labels``: customer_id, observation_date, churned (NA while the horizon is still open).
    An account missing from the labels at its score date (no longer active by the data's account)
    has no outcome and keeps waiting.
    """
    if assignments.empty:
        return assignments.assign(churned=pd.Series(dtype=bool), revenue_kept=pd.Series(dtype=float))
    keys = assignments.assign(
        observation_date=pd.to_datetime(assignments["scored_on"]).astype("datetime64[us]")
    )
    keys = keys[keys["observation_date"] <= pd.Timestamp(matured_until)]
    found = labels[["customer_id", "observation_date", "churned"]].assign(
        observation_date=pd.to_datetime(labels["observation_date"]).astype("datetime64[us]"),
        customer_id=labels["customer_id"].astype(str),
    )
    joined = keys.assign(customer_id=keys["customer_id"].astype(str)).merge(
        found, on=["customer_id", "observation_date"], how="inner"
    )
    joined = joined[joined["churned"].notna()].copy()
    joined["churned"] = joined["churned"].astype(int).astype(bool)
    months = joined["horizon_days"].astype(float) / DAYS_PER_MONTH
    joined["revenue_kept"] = (~joined["churned"]) * joined["mrr"].fillna(0.0).astype(float) * months
    return joined.drop(columns="observation_date").reset_index(drop=True)
