"""Batch scoring: every active customer at a date, with their recent history, what changed since the
previous score and their usage by month; ``write_workspace`` stores it in the DuckDB file the CSM
pages read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnml.data.tables import ContractTables
from churnml.engine import write_tables
from churnml.explain import DEFAULT_PLAYBOOK, REASONS_SHOWN, AccountReasons, Playbook
from churnml.explain.changes import reason_changes
from churnml.features.batch import FeatureBuilder, scoring_rows
from churnml.features.engine import build_features
from churnml.impact.uplift import UpliftModel
from churnml.labels import build_labels, observation_dates
from churnml.model import ChurnModel
from churnml.score.partitions import score_and_explain
from churnml.score.rows import DEFAULT_POLICY, RiskPolicy, top_play, with_expected_saving
from churnml.spec import DatasetSpec

__all__ = [
    "REASON_COLUMNS",
    "ScoreResult",
    "reason_records",
    "score_customers",
    "usage_by_month",
    "write_workspace",
]

USAGE_MONTHS = 6  # the account page's usage trend: the last full months before the score
USAGE_TYPES = 4  # ... of the event types with the most events in them (the account's main activity)


@dataclass
class ScoreResult:
    as_of: pd.Timestamp
    scores: pd.DataFrame  # one row per active customer, ranked by revenue at risk
    reasons: pd.DataFrame  # long: customer_id, kind, rank, signal, feature, sentence, contribution, play...
    history: pd.DataFrame  # customer_id, observation_date, probability, risk_tier, revenue_at_risk, reasons
    model_info: dict[str, str]
    changes: pd.DataFrame | None = None  # what changed since each account's previous score, per reason
    usage: pd.DataFrame | None = None  # events per account, month and main event type (usage_by_month)


REASON_COLUMNS = [
    "customer_id", "as_of", "kind", "rank", "signal", "feature", "label", "sentence", "value", "contribution",
    "direction", "strength", "actionable", "group", "values", "comparison", "percentile", "play", "play_action",
    "play_condition", "play_facts",
]  # fmt: skip


def reason_records(
    customer_ids: np.ndarray, as_of: pd.Timestamp, explained: list[AccountReasons]
) -> pd.DataFrame:
    """Every account's reasons as one long table (problems, protective factors, context; ranked per kind)."""
    records = [
        (cid, as_of, kind, rank, r.signal, r.feature, r.label, r.sentence, None if r.value is None else str(r.value),
         r.contribution, r.direction, r.strength, r.actionable, r.group, json.dumps(r.values), r.comparison,
         r.percentile, r.play, r.play_action, r.play_condition, json.dumps(r.play_facts))
        for cid, account in zip(customer_ids, explained, strict=True)
        for kind, reasons in (("problem", account.problems), ("protective", account.protective),
                              ("context", account.context))
        for rank, r in enumerate(reasons, start=1)
    ]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=REASON_COLUMNS)


def _problem_signals(explained: list[AccountReasons]) -> list[str]:
    return [json.dumps([r.signal for r in a.problems]) for a in explained]


def score_customers(
    tables: ContractTables,
    spec: DatasetSpec,
    model: ChurnModel,
    as_of: pd.Timestamp,
    model_info: dict[str, str] | None = None,
    k: int = REASONS_SHOWN,
    history: int = 6,
    policy: RiskPolicy = DEFAULT_POLICY,
    playbook: Playbook = DEFAULT_PLAYBOOK,
    build: FeatureBuilder = build_features,
    uplift: UpliftModel | None = None,
) -> ScoreResult:
    """Score every customer active at ``as_of`` with reasons and plays, the ``history`` dates before,
    and what changed in each account's reasons since its previous score. ``build`` computes the
    features (`build_features`, or the same on Spark: `churnml.features.spark`); with an ``uplift``
    model, also how much a play would lower each churn probability and the revenue that saves."""
    as_of = pd.Timestamp(as_of).normalize()
    rows = scoring_rows(tables, spec, as_of)
    if rows.empty:
        raise ValueError(f"score: no active customers at {as_of.date()}")
    features, scored, explained = score_and_explain(tables, rows, model, policy, k, playbook, build).parts
    ids = features["customer_id"].to_numpy()
    if uplift is not None:
        # each account's uplift is that of the play it is assigned (the mean play's if it has none)
        plays = np.array([top_play(a) for a in explained], dtype=object)
        scored = with_expected_saving(
            scored, uplift.uplift(model.encode(features), plays), model.horizon_days
        )
    scores = _score_table(tables, features, scored, ids, as_of, explained)
    now = scores[["customer_id", "as_of", "probability", "risk_tier", "revenue_at_risk"]].rename(
        columns={"as_of": "observation_date"}
    )
    signals = pd.Series(_problem_signals(explained), index=ids)
    now["reasons"] = signals.reindex(now["customer_id"]).to_numpy()
    past, past_features, past_explained = _past_scores(
        tables, spec, model, as_of, ids, k, history, policy, playbook, build
    )
    hist = pd.concat([past, now], ignore_index=True).sort_values(
        ["customer_id", "observation_date"], kind="stable"
    )
    changes = reason_changes(model.catalogue, features, explained, past_features, past_explained)
    scores = _with_previous_score(scores, past)
    info = {**(model_info or {}), "horizon_days": str(model.horizon_days), "currency": spec.currency,
            "risk_high": str(policy.high), "risk_medium": str(policy.medium)}  # fmt: skip
    return ScoreResult(as_of, scores, reason_records(ids, as_of, explained), hist.reset_index(drop=True),
                       info, changes, usage_by_month(tables, ids, as_of))  # fmt: skip


def _with_previous_score(scores: pd.DataFrame, past: pd.DataFrame) -> pd.DataFrame:
    """Each account's previous score beside today's: the list sorts by the change and alerts read it."""
    previous = (
        past.sort_values("observation_date", kind="stable")
        .groupby("customer_id")
        .tail(1)
        .set_index("customer_id")
    )
    ids = scores["customer_id"]
    scores["previous_date"] = previous["observation_date"].reindex(ids).to_numpy()
    scores["previous_probability"] = previous["probability"].reindex(ids).to_numpy(float)
    scores["previous_tier"] = previous["risk_tier"].reindex(ids).to_numpy()
    scores["probability_change"] = scores["probability"] - scores["previous_probability"]
    return scores


def usage_by_month(
    tables: ContractTables, ids: np.ndarray, as_of: pd.Timestamp, months: int = USAGE_MONTHS,
    types: int = USAGE_TYPES,
) -> pd.DataFrame:  # fmt: skip
    """Events per account, calendar month and event type over the ``months`` full months before
    ``as_of``, for the ``types`` event types with the most events then: what a CSM checks a usage
    reason against. Months without events are absent (the page shows them as 0)."""
    end = as_of.normalize().replace(day=1)
    start = end - pd.DateOffset(months=months)
    con = tables.con
    con.register("_usage_ids", pd.DataFrame({"customer_id": ids}))
    try:
        return con.execute(
            """
            WITH window_events AS (
                SELECT e.customer_id, e.event_type, e."timestamp" FROM events e
                JOIN _usage_ids USING (customer_id) WHERE e."timestamp" >= ? AND e."timestamp" < ?),
            main AS (SELECT event_type FROM window_events GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT ?)
            SELECT customer_id, date_trunc('month', "timestamp")::DATE AS month, event_type, count(*) AS events
            FROM window_events WHERE event_type IN (SELECT event_type FROM main) GROUP BY ALL ORDER BY ALL
            """,
            [start.to_pydatetime(), end.to_pydatetime(), types],
        ).df()
    finally:
        con.unregister("_usage_ids")


def _score_table(
    tables: ContractTables, features: pd.DataFrame, scored: pd.DataFrame, ids: np.ndarray,
    as_of: pd.Timestamp, explained: list[AccountReasons],
) -> pd.DataFrame:  # fmt: skip
    """One row per account, ranked by revenue at risk, with its headline reason and play, and the facts
    a CSM checks a reason against (name, seats used of seats, renewal date, tenure)."""
    profile = tables.con.execute(
        "SELECT customer_id, name, csm_owner, segment FROM customers"
    ).df().drop_duplicates("customer_id").set_index("customer_id")  # fmt: skip
    scores = pd.DataFrame({"customer_id": ids, "as_of": as_of}).join(scored.reset_index(drop=True))
    scores["name"] = profile["name"].reindex(ids).to_numpy()
    scores["plan"] = features["plan"].to_numpy() if "plan" in features else None
    scores["segment"] = profile["segment"].reindex(ids).to_numpy()
    scores["csm_owner"] = profile["csm_owner"].reindex(ids).to_numpy()

    def number(column: str) -> np.ndarray:
        return (
            pd.to_numeric(features[column], errors="coerce").to_numpy(float) if column in features else np.nan
        )

    scores["seats"] = number("seats")
    scores["seats_used"] = number("active_users_30d")  # distinct users in the last 30 days
    scores["tenure_days"] = number("tenure_days")
    scores["renewal_date"] = (
        (as_of + pd.to_timedelta(np.ceil(number("days_to_renewal")), unit="D")).normalize()
        if "days_to_renewal" in features
        else pd.NaT
    )
    scores["top_reason"] = [a.headline for a in explained]
    scores["top_play"] = [top_play(a) for a in explained]
    scores = scores.sort_values(["revenue_at_risk", "customer_id"], ascending=[False, True], kind="stable")
    scores["rank"] = np.arange(1, len(scores) + 1)
    return scores.reset_index(drop=True)


def _past_scores(
    tables: ContractTables, spec: DatasetSpec, model: ChurnModel, as_of: pd.Timestamp, ids: np.ndarray,
    k: int, history: int, policy: RiskPolicy, playbook: Playbook, build: FeatureBuilder = build_features,
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[AccountReasons]]:  # fmt: skip
    """The accounts' scores and reasons at the ``history`` observation dates before ``as_of``, explained
    exactly as today's (same k, same rules), so a reason's presence can be compared across dates."""
    empty = pd.DataFrame(columns=["customer_id", "observation_date", "probability", "risk_tier", "revenue_at_risk",
                                  "reasons"])  # fmt: skip
    dates = [d for d in observation_dates(spec, tables.window, labelled_only=False) if d < as_of][-history:]
    if not dates or history <= 0:
        return empty, None, []
    past = build_labels(tables, spec, dates=dates)[["customer_id", "observation_date"]]
    past = past[past["customer_id"].isin(set(ids))].reset_index(drop=True)
    if past.empty:
        return empty, None, []
    past_features, past_scored, past_explained = score_and_explain(
        tables, past, model, policy, k, playbook, build
    ).parts
    frame = past[["customer_id", "observation_date"]].join(
        past_scored[["probability", "risk_tier", "revenue_at_risk"]].reset_index(drop=True)
    )
    frame["reasons"] = _problem_signals(past_explained)
    return frame, past_features, past_explained


def write_workspace(result: ScoreResult, path: Path, extra: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write scores, reasons, history and changes to a DuckDB file atomically (readers never see half a file)."""
    optional = {"reason_changes": result.changes, "usage_monthly": result.usage}
    meta = pd.DataFrame([{"as_of": result.as_of, "generated_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
                          **{k: str(v) for k, v in result.model_info.items()}}])  # fmt: skip
    tables = {"scores": result.scores, "reasons": result.reasons, "score_history": result.history,
              **{k: v for k, v in optional.items() if v is not None}, **(extra or {}), "meta": meta}  # fmt: skip
    return write_tables(path, tables)
