"""Training rows for a churn model that is not fooled by the plays' own success.

An account a play saved looks, in the training data, like an account whose warning signs were
harmless. On the simulator (benchmarks/bench_uplift.py, README "Did the calls help?") a model trained
on every row rated accounts with an unfinished onboarding, the sign the onboarding session fixes, about
a quarter too low. The choice made there: leave out the rows of treated accounts whose label window a
play could have touched, and count each held-out account's row ``1 / probability held out`` times (the
held-out accounts are a random sample of the call list, so, weighted, they stand for all of it).
Copies instead of weights: LightGBM, the time-ordered folds (copies share a date, so a fold), the
calibration and the test metrics then all see the same population without weights threaded through.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnml.impact.holdout import CONTROL, TREATED

__all__ = ["UntreatedRows", "not_listed_rows", "touching_assignments", "untreated_rows"]


@dataclass(frozen=True)
class UntreatedRows:
    table: pd.DataFrame
    treated_left_out: int  # rows
    held_out_weighted: int  # rows counted more than once
    copies: int  # rows added by the weighting

    def describe(self) -> str:
        return (f"training without the plays' success: {self.treated_left_out:,} treated row(s) left out, "
                f"{self.held_out_weighted:,} held-out row(s) counted for the call list (+{self.copies:,} copies)")  # fmt: skip


def touching_assignments(table: pd.DataFrame, assignments: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """Each (row of ``table``, assignment) pair where the assignment of the row's account was scored
    within ``horizon_days`` of the row's date, either side (the play falls in its label window, or its
    window follows the play): ``row`` (position in ``table``) and the assignment's columns."""
    unknown = sorted(set(assignments["arm"]) - {TREATED, CONTROL})
    if unknown:
        raise ValueError(f"holdouts.arm: expected {TREATED} or {CONTROL}, got {unknown[0]!r}")
    rows = table[["customer_id", "observation_date"]].reset_index(drop=True).assign(row=lambda f: f.index)
    plays = assignments.assign(scored_on=pd.to_datetime(assignments["scored_on"]).astype("datetime64[us]"),
                               customer_id=assignments["customer_id"].astype(str))  # fmt: skip
    joined = rows.assign(customer_id=rows["customer_id"].astype(str)).merge(plays, on="customer_id")
    gap = (joined["observation_date"].astype("datetime64[us]") - joined["scored_on"]).abs()
    return joined[gap < pd.Timedelta(days=horizon_days)]


def not_listed_rows(labels: pd.DataFrame, assignments: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """The labelled rows (customer_id, observation_date, churned) of accounts that were not on a call
    list at that date and that no play touched within the horizon: what the per-play learner's churn
    model learns from beside the call list's arms (untreated, never called)."""
    touched = touching_assignments(labels, assignments, horizon_days)
    keep = np.ones(len(labels), bool)
    keep[touched["row"].to_numpy()] = False  # on the list that day, or called within the horizon
    return labels.reset_index(drop=True)[keep].reset_index(drop=True)


def untreated_rows(table: pd.DataFrame, assignments: pd.DataFrame, horizon_days: int) -> UntreatedRows:
    """``table`` (customer_id, observation_date, ...) without the treated rows and with the held-out
    rows repeated; a row is touched by an assignment as :func:`touching_assignments` says."""
    rows = table[["customer_id", "observation_date"]]
    touched = touching_assignments(table, assignments, horizon_days)
    treated = set(touched.loc[touched["arm"] == TREATED, "row"])
    held = touched[(touched["arm"] == CONTROL) & ~touched["row"].isin(treated)]
    weight = (1.0 / held.groupby("row")["probability"].min()).round().astype(int)
    copies = np.ones(len(rows), dtype=int)
    copies[weight.index.to_numpy()] = weight.to_numpy()
    copies[list(treated)] = 0
    out = table.reset_index(drop=True).loc[np.repeat(np.arange(len(rows)), copies)].reset_index(drop=True)
    return UntreatedRows(out, len(treated), len(weight), int((weight - 1).sum()))
