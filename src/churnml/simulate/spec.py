"""The dataset spec that reads the simulator's output: what a user would write for their own data."""

from __future__ import annotations

import pandas as pd

from churnml.simulate.config import SimulationConfig
from churnml.simulate.world import SIMULATED_EVENT_VALUES

__all__ = ["simulation_spec"]


def simulation_spec(config: SimulationConfig, path: str = ".") -> dict:
    """The dataset spec (as a dict) that reads this simulator's output."""
    start = pd.Timestamp(config.start)
    return {
        "name": "simulated-saas",
        "description": f"churnml simulator: {config.customers} accounts x {config.months} months, seed {config.seed}",
        "source": {"kind": "files", "path": path},
        "currency": "USD",
        "customers": {
            "file": "customers.parquet",
            "columns": {
                c: c for c in ["customer_id", "name", "signup_date", "plan", "segment", "mrr", "csm_owner"]
            },
            # seats, plan and mrr in customers are today's values: features take them as of each date
            # from subscriptions instead, so only static attributes are listed here
            "attributes": ["industry", "country"],
        },
        "events": [
            {
                "file": "events.parquet",
                "columns": {c: c for c in ["customer_id", "timestamp", "event_type", "value", "user_id"]},
            }
        ],  # fmt: skip
        "subscriptions": {
            "file": "subscriptions.parquet",
            "columns": {
                "customer_id": "customer_id",
                "start": "start_date",
                "end": "end_date",
                "mrr": "mrr",
                "plan": "plan",
                "seats": "seats",
            },
        },
        "event_values": SIMULATED_EVENT_VALUES,
        "churn": {"definition": "cancellation", "grace_days": 30},
        "observation": {
            "start": (start + pd.DateOffset(months=3)).date().isoformat(),
            "every": "1 month",
            "lead_days": 0,
            "horizon_days": 60,
        },
        "validation": {"max_quarantine_fraction": 0.01},
    }
