"""Holdouts and outcomes in the CSM store, beside the activity log (tables of revision 0002).

``churnml score`` records each eligible account's group (treated or control) and the probability of
being held out, once per campaign period: the first assignment of a period stands, so a re-score can
never move an account between groups after a CSM has seen it. ``churnml impact`` adds an outcome per
assignment once its horizon has passed. Both tables are append-only, like the rest of the store.
"""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import sqlalchemy as sa

from churnml.impact.holdout import CONTROL, TREATED
from churnml.impact.report import OUTCOME_COLUMNS
from churnml.workspace.store import Store, StoreError

__all__ = [
    "HOLDOUT_COLUMNS", "HOLDOUT_METADATA", "impact_outcomes", "learning_rows", "read_holdouts", "record_holdouts", "record_outcomes",
]  # fmt: skip

# the holdouts and outcomes tables (revision 0002); Alembic compares the database with it and the store's
HOLDOUT_METADATA = sa.MetaData()


def _table(name: str, *columns: sa.Column) -> sa.Table:
    return sa.Table(
        name, HOLDOUT_METADATA,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("period", sa.String(20), nullable=False),
        *columns,
        sa.UniqueConstraint("customer_id", "period", name=f"uq_{name}_account_period"),
    )  # fmt: skip


HOLDOUTS = _table(
    "holdouts",
    sa.Column("scored_on", sa.Date, nullable=False), sa.Column("arm", sa.String(10), nullable=False),
    sa.Column("probability", sa.Float, nullable=False), sa.Column("play", sa.String(200), nullable=True),
    sa.Column("mrr", sa.Float, nullable=True), sa.Column("churn_probability", sa.Float, nullable=False),
    sa.Column("horizon_days", sa.Integer, nullable=False),
)  # fmt: skip
OUTCOMES = _table(
    "outcomes", sa.Column("churned", sa.Boolean, nullable=False), sa.Column("revenue_kept", sa.Float, nullable=False),
    sa.Column("matured_on", sa.Date, nullable=False),
)  # fmt: skip
HOLDOUT_COLUMNS = ["customer_id", "period", "scored_on", "arm", "probability", "play", "mrr", "churn_probability",
                   "horizon_days"]  # fmt: skip


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _known(store: Store, table: sa.Table, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    periods = sorted({p for _, p in keys})
    if not periods:
        return set()
    query = sa.select(table.c.customer_id, table.c.period).where(table.c.period.in_(periods))
    with store.engine.connect() as con:
        return {(r.customer_id, r.period) for r in con.execute(query)} & keys


def _number(value: object) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def record_holdouts(
    store: Store, scores: pd.DataFrame, horizon_days: int, author: str = "churnml score"
) -> int:
    """Record the scored accounts' groups (rows with a ``holdout_arm``); returns how many were new."""
    marked = scores[scores["holdout_arm"].notna()]
    bad = sorted(set(marked["holdout_arm"]) - {TREATED, CONTROL})
    if bad:
        raise StoreError(f"holdout_arm: expected {TREATED} or {CONTROL}, got {str(bad[0])[:40]!r}")
    keys = set(zip(marked["customer_id"].astype(str), marked["campaign_period"].astype(str), strict=True))
    done = _known(store, HOLDOUTS, keys)
    now = _now()
    rows = [
        {"customer_id": cid, "period": period, "scored_on": pd.Timestamp(r.as_of).date(), "arm": r.holdout_arm,
         "probability": float(r.holdout_probability), "play": r.top_play if isinstance(r.top_play, str) else None,
         "mrr": _number(r.mrr), "churn_probability": float(r.probability), "horizon_days": int(horizon_days),
         "recorded_at": now, "author": author}
        for r, cid, period in zip(marked.itertuples(), marked["customer_id"].astype(str),
                                  marked["campaign_period"].astype(str), strict=True)
        if (cid, period) not in done
    ]  # fmt: skip
    if rows:
        with store.engine.begin() as con:
            con.execute(HOLDOUTS.insert(), rows)
    return len(rows)


def _frame(store: Store, query: sa.Select) -> pd.DataFrame:
    with store.engine.connect() as con:
        result = con.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def read_holdouts(store: Store, without_outcome: bool = False) -> pd.DataFrame:
    """Every recorded assignment (or only those still waiting for an outcome)."""
    query = sa.select(*(HOLDOUTS.c[c] for c in HOLDOUT_COLUMNS))
    if without_outcome:
        done = sa.select(OUTCOMES.c.id).where(
            (OUTCOMES.c.customer_id == HOLDOUTS.c.customer_id) & (OUTCOMES.c.period == HOLDOUTS.c.period)
        )
        query = query.where(~sa.exists(done))
    return _frame(store, query.order_by(HOLDOUTS.c.id))


def record_outcomes(
    store: Store, outcomes: pd.DataFrame, matured_on: dt.date, author: str = "churnml impact"
) -> int:
    """Record matured outcomes (customer_id, period, churned, revenue_kept); those recorded before are
    left as they were. Returns how many were new."""
    keys = set(zip(outcomes["customer_id"].astype(str), outcomes["period"].astype(str), strict=True))
    done = _known(store, OUTCOMES, keys)
    now = _now()
    rows = [{"customer_id": str(r.customer_id), "period": str(r.period), "churned": bool(r.churned),
             "revenue_kept": float(r.revenue_kept), "matured_on": matured_on, "recorded_at": now, "author": author}
            for r in outcomes.itertuples() if (str(r.customer_id), str(r.period)) not in done]  # fmt: skip
    if rows:
        with store.engine.begin() as con:
            con.execute(OUTCOMES.insert(), rows)
    return len(rows)


def _logged(store: Store, frame: pd.DataFrame) -> pd.Series:
    """Whether a CSM logged a play done for each assignment within its horizon (from its score date)."""
    plays = pd.DataFrame(store.plays_done(), columns=["customer_id", "done_on"])
    if frame.empty or plays.empty:
        return pd.Series(False, index=frame.index)
    both = frame[["customer_id", "scored_on", "horizon_days"]].reset_index().merge(plays, on="customer_id")
    start, done = pd.to_datetime(both["scored_on"]), pd.to_datetime(both["done_on"])
    inside = (done >= start) & (done < start + pd.to_timedelta(both["horizon_days"].astype(float), unit="D"))
    return pd.Series(frame.index.isin(both.loc[inside, "index"]), index=frame.index)


def impact_outcomes(store: Store) -> tuple[pd.DataFrame, int]:
    """The assignments with a recorded outcome (``OUTCOME_COLUMNS``, and ``logged``: whether a CSM logged
    a play done within the horizon), and how many still wait for an outcome."""
    query = sa.select(
        HOLDOUTS.c.customer_id, HOLDOUTS.c.period, HOLDOUTS.c.arm, HOLDOUTS.c.play, HOLDOUTS.c.mrr,
        OUTCOMES.c.churned, HOLDOUTS.c.horizon_days, HOLDOUTS.c.scored_on,
    ).join(OUTCOMES, (OUTCOMES.c.customer_id == HOLDOUTS.c.customer_id) & (OUTCOMES.c.period == HOLDOUTS.c.period))  # fmt: skip
    frame = _frame(store, query)
    frame["logged"] = _logged(store, frame)
    frame["horizon_months"] = frame.pop("horizon_days").astype(float) / (365.25 / 12)
    frame["churned"] = frame["churned"].astype(bool)
    frame["mrr"] = pd.to_numeric(frame["mrr"], errors="coerce").astype(float)
    with store.engine.connect() as con:
        total = con.execute(sa.select(sa.func.count()).select_from(HOLDOUTS)).scalar_one()
    return frame[[*OUTCOME_COLUMNS, "logged"]].reset_index(drop=True), int(total) - len(frame)


def learning_rows(store: Store) -> pd.DataFrame:
    """What uplift learns from: each assignment with an outcome (customer_id, observation_date = the
    score date, treated, churned, and play: the play suggested for the account, given to the treated
    and not to the held out; None if none was), the treated and held-out accounts of every campaign."""
    query = sa.select(
        HOLDOUTS.c.customer_id, HOLDOUTS.c.scored_on, HOLDOUTS.c.arm, HOLDOUTS.c.play, OUTCOMES.c.churned
    ).join(OUTCOMES, (OUTCOMES.c.customer_id == HOLDOUTS.c.customer_id) & (OUTCOMES.c.period == HOLDOUTS.c.period))  # fmt: skip
    frame = _frame(store, query.order_by(HOLDOUTS.c.id))
    return pd.DataFrame({
        "customer_id": frame["customer_id"].astype(str),
        "observation_date": pd.to_datetime(frame["scored_on"]).astype("datetime64[us]"),
        "treated": (frame["arm"] == TREATED).to_numpy(bool), "churned": frame["churned"].astype(bool).to_numpy(),
        "play": frame["play"].astype(object).where(frame["play"].notna(), None),
    })  # fmt: skip
