"""From a probability to what a CSM acts on: health score, risk tier, revenue at risk, reasons, play.

``score_features`` is shared by the online endpoint and batch scoring; ``score_customers`` is the
batch path (every active customer at a date, plus their recent history) and ``write_workspace``
stores its result in the DuckDB file the CSM pages read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from churnml.explain import Reason, explain_rows
from churnml.features import build_features, scoring_rows
from churnml.labels import build_labels, data_window, observation_dates
from churnml.model import ChurnModel
from churnml.playbook import DEFAULT_PLAYBOOK, Playbook
from churnml.spec import DatasetSpec

__all__ = ["RiskPolicy", "ScoreResult", "score_customers", "score_features", "write_workspace"]

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


def reasons_with_plays(
    model: ChurnModel,
    features: pd.DataFrame,
    k: int,
    playbook: Playbook,
    only_raising: bool,
    num_threads: int = 1,
    contributions: np.ndarray | None = None,
) -> list[list[tuple[Reason, str | None, str | None]]]:
    """Top reasons per row with the playbook's play (name, action) for each."""
    contrib = contributions if contributions is not None else model.contributions(features, num_threads)[0]
    event_type = {i.name: i.event_type for i in model.catalogue}
    plays: dict[
        tuple[str, bool], tuple[str | None, str | None]
    ] = {}  # the play depends on feature and sign only
    out = []
    for reasons in explain_rows(features, contrib, model.catalogue, k, only_raising):
        row = []
        for r in reasons:
            key = (r.feature, r.contribution > 0)
            if key not in plays:
                play = playbook.play_for(r, event_type.get(r.feature))
                plays[key] = (play.name, play.action) if play else (None, None)
            row.append((r, *plays[key]))
        out.append(row)
    return out


@dataclass
class ScoreResult:
    as_of: pd.Timestamp
    scores: pd.DataFrame  # one row per active customer, ranked by revenue at risk
    reasons: pd.DataFrame  # long: customer_id, rank, feature, sentence, contribution, play...
    history: pd.DataFrame  # customer_id, observation_date, probability, risk_tier, revenue_at_risk, reasons
    model_info: dict[str, str]


def _reason_records(customer_ids: np.ndarray, as_of: pd.Timestamp, reasons: list) -> pd.DataFrame:
    records = [
        (cid, as_of, rank, r.feature, r.label, r.sentence, None if r.value is None else str(r.value), r.contribution,
         r.direction, r.strength, r.actionable, r.group, json.dumps(r.values), play, action)
        for cid, row in zip(customer_ids, reasons, strict=True)
        for rank, (r, play, action) in enumerate(row, start=1)
    ]  # fmt: skip
    columns = ["customer_id", "as_of", "rank", "feature", "label", "sentence", "value", "contribution", "direction",
               "strength", "actionable", "group", "values", "play", "play_action"]  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)


def score_customers(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    model: ChurnModel,
    as_of: pd.Timestamp,
    model_info: dict[str, str] | None = None,
    k: int = 5,
    history: int = 6,
    policy: RiskPolicy = RiskPolicy(),
    playbook: Playbook = DEFAULT_PLAYBOOK,
) -> ScoreResult:
    """Score every customer active at ``as_of`` with reasons and plays, and the ``history`` dates before."""
    as_of = pd.Timestamp(as_of).normalize()
    rows = scoring_rows(con, spec, as_of)
    if rows.empty:
        raise ValueError(f"score: no active customers at {as_of.date()}")
    features = build_features(con, rows, model.feature_set)
    scored = score_features(model, features, policy, num_threads=0)
    ids = features["customer_id"].to_numpy()
    all_reasons = reasons_with_plays(model, features, k, playbook, only_raising=True, num_threads=0)
    profile = con.execute(
        "SELECT customer_id, csm_owner, segment FROM customers"
    ).df().drop_duplicates("customer_id").set_index("customer_id")  # fmt: skip
    scores = pd.DataFrame({"customer_id": ids, "as_of": as_of}).join(scored.reset_index(drop=True))
    scores["plan"] = features["plan"].to_numpy() if "plan" in features else None
    scores["segment"] = profile["segment"].reindex(ids).to_numpy()
    scores["csm_owner"] = profile["csm_owner"].reindex(ids).to_numpy()
    scores["top_reason"] = [r[0][0].sentence if r else None for r in all_reasons]
    scores["top_play"] = [r[0][1] if r else None for r in all_reasons]
    top3 = pd.Series(
        [json.dumps([r.feature for r, _, _ in rr[:3]]) for rr in all_reasons], index=scores.index
    )
    scores = scores.sort_values(["revenue_at_risk", "customer_id"], ascending=[False, True], kind="stable")
    scores["rank"] = np.arange(1, len(scores) + 1)
    reasons = _reason_records(ids, as_of, all_reasons)

    dates = [d for d in observation_dates(spec, data_window(con), labelled_only=False) if d < as_of][
        -history:
    ]
    frames = []
    if dates and history > 0:
        past = build_labels(con, spec, dates=dates)[["customer_id", "observation_date"]]
        past = past[past["customer_id"].isin(set(ids))].reset_index(drop=True)
        if not past.empty:
            past_features = build_features(con, past, model.feature_set)
            past_scored = score_features(model, past_features, policy, num_threads=0)
            past_reasons = reasons_with_plays(
                model, past_features, 3, playbook, only_raising=True, num_threads=0
            )
            frames.append(
                past[["customer_id", "observation_date"]].join(
                    past_scored[["probability", "risk_tier", "revenue_at_risk"]].reset_index(drop=True)
                ).assign(reasons=[json.dumps([r.feature for r, _, _ in rr]) for rr in past_reasons])
            )  # fmt: skip
    now = scores[["customer_id", "as_of", "probability", "risk_tier", "revenue_at_risk"]].rename(
        columns={"as_of": "observation_date"}
    )
    now["reasons"] = top3.reindex(now.index).to_numpy()
    frames.append(now)
    hist = pd.concat(frames, ignore_index=True).sort_values(
        ["customer_id", "observation_date"], kind="stable"
    )
    return ScoreResult(
        as_of, scores.reset_index(drop=True), reasons, hist.reset_index(drop=True), model_info or {}
    )


def write_workspace(result: ScoreResult, path: Path, extra: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write scores, reasons and history to a DuckDB file atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with duckdb.connect(str(tmp)) as con:
            tables = {"scores": result.scores, "reasons": result.reasons, "score_history": result.history,
                      **(extra or {})}  # fmt: skip
            for name, frame in tables.items():
                con.register("_frame", frame)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM _frame")
                con.unregister("_frame")
            meta = pd.DataFrame([{"as_of": result.as_of, "generated_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
                                  **{k: str(v) for k, v in result.model_info.items()}}])  # fmt: skip
            con.register("_frame", meta)
            con.execute("CREATE TABLE meta AS SELECT * FROM _frame")
            con.unregister("_frame")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
