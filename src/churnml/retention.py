"""Retention metrics for the CSM overview: churn and retention per month, cohorts, NRR, NPS, CLTV.

Computed from the validated contract tables with the same churn definition as the labels (a
month's churn rate = share of customers active at its first day who churn within the month), so
the overview and the model agree on what churn is.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from churnml.data.tables import ContractTables, DataWindow
from churnml.labels import build_labels, label_margin
from churnml.score import ScoreResult
from churnml.spec import DatasetSpec

__all__ = ["monthly_retention", "cohort_retention", "segment_summary", "retention_tables"]


def _month_starts(window: DataWindow) -> list[pd.Timestamp]:
    first = window.start.normalize() + pd.offsets.MonthBegin(1)
    return list(pd.date_range(first, window.end.normalize(), freq="MS"))


def _monthly_spec(spec: DatasetSpec, days: int = 31) -> DatasetSpec:
    obs = spec.observation.model_copy(update={"lead_days": 0, "horizon_days": days, "every": "1 month"})
    return spec.model_copy(update={"observation": obs})


def _population(tables: ContractTables, spec: DatasetSpec) -> pd.DataFrame:
    """Customers active at each month's first day; churned = churn within that calendar month."""
    months = _month_starts(tables.window)
    if not months:
        return pd.DataFrame(columns=["customer_id", "observation_date", "churned"])
    frames = [build_labels(tables, _monthly_spec(spec, m.days_in_month), dates=[m]) for m in months]
    return pd.concat(frames, ignore_index=True)


def monthly_retention(
    con: duckdb.DuckDBPyConnection, population: pd.DataFrame, labelled_until: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Per month: active customers at its start, churned within it, churn/retention rate, NRR, NPS.

    Only months whose whole churn window is observed (start <= ``labelled_until``): in a later month
    only the churners are known yet, which would read as 100% churn.
    """
    if labelled_until is not None:
        population = population[population["observation_date"] <= labelled_until]
    if population.empty:
        return pd.DataFrame(
            columns=["month", "active", "churned", "churn_rate", "retention_rate", "nrr", "nps"]
        )
    labelled = population.dropna(subset=["churned"])
    monthly = labelled.groupby("observation_date").agg(
        active=("customer_id", "size"), churned=("churned", "sum")
    )
    monthly["churn_rate"] = monthly["churned"] / monthly["active"]
    monthly["retention_rate"] = 1 - monthly["churn_rate"]
    monthly = monthly.reset_index().rename(columns={"observation_date": "month"})
    monthly["nrr"] = _nrr(con, population, monthly["month"])
    monthly["nrr_12m"] = _nrr(con, population, monthly["month"], months_back=12)
    nps = _nps(con)
    monthly = monthly.merge(nps, on="month", how="left")
    monthly["churned"] = monthly["churned"].astype(int)
    return monthly


def _nrr(
    con: duckdb.DuckDBPyConnection, population: pd.DataFrame, months: pd.Series, months_back: int = 1
) -> np.ndarray:
    """Net revenue retention: with ``months_back`` 1, MRR a month later from the customers active at the
    month's start; with 12, MRR at the month's start from the customers active twelve months before (the
    usual yearly NRR, NaN where the data does not reach that far back)."""
    has_mrr = con.execute("SELECT count(*) FROM subscriptions WHERE mrr IS NOT NULL").fetchall()[0][0]
    if not has_mrr:
        return np.full(len(months), np.nan)
    starts = population[["customer_id", "observation_date"]]
    con.register("_pop", starts)
    try:
        frame = con.execute(
            """
            WITH pts AS (SELECT customer_id, observation_date AS t, observation_date + INTERVAL (?) MONTH AS t1 FROM _pop),
            mrr_at AS (
                SELECT p.t, p.customer_id,
                       (SELECT sum(s.mrr) FROM subscriptions s WHERE s.customer_id = p.customer_id
                          AND s."start" <= p.t AND (s."end" IS NULL OR s."end" > p.t)) AS m0,
                       (SELECT sum(s.mrr) FROM subscriptions s WHERE s.customer_id = p.customer_id
                          AND s."start" <= p.t1 AND (s."end" IS NULL OR s."end" > p.t1)) AS m1
                FROM pts p)
            SELECT t AS month, sum(coalesce(m1, 0)) / NULLIF(sum(m0), 0) AS nrr FROM mrr_at GROUP BY t
            """,
            [months_back],
        ).df()
    finally:
        con.unregister("_pop")
    by_start = frame.set_index("month")["nrr"]
    if months_back > 1:  # keyed by the month it ends in: the year up to that month
        by_start.index = pd.DatetimeIndex(by_start.index) + pd.DateOffset(months=months_back)
    return by_start.reindex(pd.DatetimeIndex(months)).to_numpy(float)


def _nps(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """NPS per month (% promoters 9-10 minus % detractors 0-6) from nps_response events."""
    return (
        con.execute(
            """
        SELECT date_trunc('month', "timestamp")::TIMESTAMP AS month,
               100.0 * (count(*) FILTER (WHERE value >= 9) - count(*) FILTER (WHERE value <= 6)) / count(*) AS nps,
               count(*) AS nps_responses
        FROM events WHERE event_type = 'nps_response' AND value IS NOT NULL
        GROUP BY ALL
        """
        )
        .df()
        .astype({"month": "datetime64[us]"})
    )


def cohort_retention(population: pd.DataFrame, max_months: int = 12) -> pd.DataFrame:
    """Share of each signup cohort still active k months after its first month (long form)."""
    if population.empty:
        return pd.DataFrame(columns=["cohort", "months_since", "active", "size", "retention"])
    first = population.groupby("customer_id")["observation_date"].min().rename("cohort")
    pop = population[["customer_id", "observation_date"]].join(first, on="customer_id")
    pop = pop[
        pop["cohort"] > population["observation_date"].min()
    ]  # first month holds everyone already there
    pop["months_since"] = (
        (pop["observation_date"].dt.year - pop["cohort"].dt.year) * 12
        + (pop["observation_date"].dt.month - pop["cohort"].dt.month)
    )  # fmt: skip
    pop = pop[pop["months_since"] <= max_months]
    counts = pop.groupby(["cohort", "months_since"]).size().rename("active").reset_index()
    size = counts[counts["months_since"] == 0].set_index("cohort")["active"].rename("size")
    counts = counts.join(size, on="cohort")
    counts["retention"] = counts["active"] / counts["size"]
    return counts


def segment_summary(
    scores: pd.DataFrame,
    population: pd.DataFrame,
    profile: pd.DataFrame,
    labelled_until: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Per segment: accounts, MRR, revenue at risk, high-risk accounts, monthly churn rate and CLTV.

    CLTV = average MRR / monthly churn rate (the expected lifetime revenue of an account), over the
    last six labelled months.
    """
    seg = scores.assign(segment=scores["segment"].fillna("(none)"))
    out = seg.groupby("segment").agg(
        accounts=("customer_id", "size"), mrr=("mrr", "sum"), avg_mrr=("mrr", "mean"),
        revenue_at_risk=("revenue_at_risk", "sum"), high_risk=("risk_tier", lambda t: int((t == "high").sum())),
        avg_probability=("probability", "mean"),
    )  # fmt: skip
    if labelled_until is not None:  # as in monthly_retention: only fully observed months
        population = population[population["observation_date"] <= labelled_until]
    labelled = population.dropna(subset=["churned"])
    recent = labelled[labelled["observation_date"].isin(sorted(labelled["observation_date"].unique())[-6:])]
    recent = recent.join(profile["segment"].fillna("(none)"), on="customer_id")
    rate = recent.groupby("segment")["churned"].mean().astype(float).rename("monthly_churn_rate")
    out = out.join(rate)
    out["cltv"] = out["avg_mrr"] / out["monthly_churn_rate"].where(out["monthly_churn_rate"] > 0)
    return out.reset_index().sort_values("revenue_at_risk", ascending=False, kind="stable")


def retention_tables(
    tables: ContractTables, spec: DatasetSpec, result: ScoreResult
) -> dict[str, pd.DataFrame]:
    """The overview's tables, written beside the scores in the workspace."""
    con = tables.con
    population = _population(tables, spec)
    labelled_until = tables.window.observed_until - label_margin(_monthly_spec(spec))
    profile = con.execute("SELECT customer_id, segment FROM customers").df().drop_duplicates("customer_id")
    window = pd.DataFrame([{"data_end": tables.window.end, "labelled_until": labelled_until,
                            "margin_days": label_margin(_monthly_spec(spec)).days}])  # fmt: skip
    return {
        "retention_window": window,  # why the monthly figures stop before the score date (the pages say it)
        "retention_monthly": monthly_retention(con, population, labelled_until),
        "cohort_retention": cohort_retention(population),
        "segment_summary": segment_summary(
            result.scores, population, profile.set_index("customer_id"), labelled_until
        ),
    }
