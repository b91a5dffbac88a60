"""From a probability to what a CSM acts on: health score, risk tier, revenue at risk, reasons, play.

``score_features`` and ``explain_scored`` are shared by the online endpoint and batch scoring, so the
API and the account page say the same thing; ``score_customers`` is the batch path (every active
customer at a date, plus their recent history and what changed since the previous score) and
``write_workspace`` stores its result in the DuckDB file the CSM pages read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from churnml.data.tables import ContractTables
from churnml.engine import write_tables
from churnml.explain import DEFAULT_PLAYBOOK, AccountReasons, Explainer, Playbook
from churnml.explain.changes import reason_changes
from churnml.features.batch import FeatureBuilder, scoring_rows
from churnml.features.engine import build_features
from churnml.impact.uplift import UpliftModel
from churnml.labels import build_labels, observation_dates
from churnml.model import ChurnModel
from churnml.spec import DatasetSpec

if TYPE_CHECKING:
    from churnml.features.spark import PartitionStep

__all__ = [
    "RiskPolicy",
    "ScoreResult",
    "ScoredRows",
    "explain_scored",
    "health_score",
    "score_and_explain",
    "reason_records",
    "revenue_at_risk",
    "score_customers",
    "score_features",
    "top_play",
    "usage_by_month",
    "with_expected_saving",
    "write_workspace",
]

DAYS_PER_MONTH = 365.25 / 12
USAGE_MONTHS = 6  # the account page's usage trend: the last full months before the score
USAGE_TYPES = 4  # ... of the event types with the most events in them (the account's main activity)


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
    model: ChurnModel, features: pd.DataFrame, policy: RiskPolicy = RiskPolicy(), num_threads: int = 1
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


@dataclass
class ScoredRows:
    """Rows with their features, scores and reasons, and how many Spark partitions computed them (0: here)."""

    features: pd.DataFrame
    scored: pd.DataFrame  # score_features' columns, index 0..n-1
    explained: list[AccountReasons]
    partitions: int = 0

    @property
    def parts(self) -> tuple[pd.DataFrame, pd.DataFrame, list[AccountReasons]]:
        return self.features, self.scored, self.explained


_SCORED = {"probability": pa.float64(), "health_score": pa.int64(), "risk_tier": pa.string(),
           "mrr": pa.float64(), "revenue_at_risk": pa.float64()}  # fmt: skip
_EXPLAINED = "_reasons"
_STEP = "_scored_"  # the step's columns beside the features (``mrr`` is both)


def score_and_explain(
    tables: ContractTables, rows: pd.DataFrame, model: ChurnModel, policy: RiskPolicy, k: int,
    playbook: Playbook = DEFAULT_PLAYBOOK, build: FeatureBuilder = build_features,
) -> ScoredRows:  # fmt: skip
    """The features, scores and reasons of ``rows``: here, or with the Spark engine inside each customer
    partition (the model travels to the executors in its own files and is checked there on load), so
    batch scoring with SHAP reasons grows with the cluster, not with the driver."""
    from churnml.features.spark import SparkFeatures  # pyspark itself is imported only when used

    if not isinstance(build, SparkFeatures):
        features = build(tables, rows, model.feature_set)
        scored = score_features(model, features, policy, num_threads=0)
        return ScoredRows(
            features, scored, explain_scored(model, features, scored, k, playbook, num_threads=0)
        )
    done, partitions = build.with_step(
        tables, rows, model.feature_set, _scoring_step(model, policy, k, playbook)
    )
    explained = [AccountReasons.from_json(text) for text in done[_EXPLAINED]]
    step_columns = [f"{_STEP}{c}" for c in _SCORED]
    scored = done[step_columns].set_axis(list(_SCORED), axis=1).astype({"health_score": int})
    return ScoredRows(done.drop(columns=[*step_columns, _EXPLAINED]), scored, explained, partitions)


def _scoring_step(model: ChurnModel, policy: RiskPolicy, k: int, playbook: Playbook) -> PartitionStep:
    """`score_features` and `explain_scored` as each Spark partition runs them on its features."""
    from churnml.features.spark import PartitionStep

    files = model.to_files()

    def run(features: pd.DataFrame) -> pd.DataFrame:
        here = _executor_model(files)
        scored = score_features(here, features, policy)
        explained = explain_scored(here, features, scored, k, playbook)
        out = scored.reset_index(drop=True).add_prefix(_STEP)
        return out.assign(**{_EXPLAINED: [a.to_json() for a in explained]})

    return PartitionStep(
        run, pa.schema([*((f"{_STEP}{c}", t) for c, t in _SCORED.items()), (_EXPLAINED, pa.string())])
    )


_EXECUTOR_MODELS: dict[str, ChurnModel] = {}  # an executor's Python worker loads each model once


def _executor_model(files: dict[str, bytes]) -> ChurnModel:
    import hashlib

    digest = hashlib.sha256(b"".join(files[name] for name in sorted(files))).hexdigest()
    if digest not in _EXECUTOR_MODELS:
        _EXECUTOR_MODELS.clear()
        _EXECUTOR_MODELS[digest] = ChurnModel.from_files(files)
    return _EXECUTOR_MODELS[digest]


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
    k: int = 5,
    history: int = 6,
    policy: RiskPolicy = RiskPolicy(),
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
