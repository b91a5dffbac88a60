"""Validated requests in, predictions and explanations out: one :class:`Predictor` per service worker.

Long work is done in blocks with a :class:`~churnml.service.compute.Stop` checked between them, so a
request that timed out stops computing. Raw behaviour is turned into features in one pass for all
its customers, whatever their ``as_of`` dates (a pass per date cost ~60 ms each: 500 dates, 30 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from starlette.responses import Response

from churnml.config import Settings
from churnml.engine import connect
from churnml.explain import DEFAULT_PLAYBOOK, REASONS_SHOWN, Explainer, Playbook, Reason, load_playbook
from churnml.features.definitions import slug
from churnml.features.engine import build_features
from churnml.features.online import load_contract_frames
from churnml.model import ChurnModel
from churnml.score import RiskPolicy, score_features
from churnml.service.compute import NEVER, Compute, Stop
from churnml.service.model_store import load_serving_model
from churnml.service.schemas import (
    CustomerIn,
    ExplainResponse,
    Explanation,
    ModelInfo,
    Prediction,
    PredictResponse,
    ProfileIn,
    ReasonOut,
    RequestErrors,
)

__all__ = ["INLINE_RECORDS", "Predictor", "answer", "default_as_of"]

INLINE_RECORDS = 4  # feature records answered on the event loop (a few ms); more go to a worker thread
RECORD_BLOCK = 100  # customers explained between two checks of the stop flag
RAW_BLOCK_EVENTS = 50_000  # raw-behaviour events turned into features between two checks
RAW_BLOCK_CUSTOMERS = 250
_ONLINE_DUCKDB = Settings(duckdb_memory_limit="512MB", duckdb_threads=1)  # one request's features

log = logging.getLogger(__name__)


def default_as_of() -> pd.Timestamp:
    """The next UTC midnight: features then see everything up to now."""
    return pd.Timestamp(datetime.now(UTC).replace(tzinfo=None)).normalize() + pd.Timedelta(days=1)


def _naive_utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def _opt_ts(ts: datetime | None) -> datetime | None:
    return _naive_utc(ts) if ts is not None else None


def _blocks(items: list[tuple[int, CustomerIn]]) -> Iterator[list[tuple[int, CustomerIn]]]:
    """Raw-behaviour customers in blocks of bounded work (events and customers)."""
    block: list[tuple[int, CustomerIn]] = []
    events = 0
    for item in items:
        n = len(item[1].events or [])
        if block and (events + n > RAW_BLOCK_EVENTS or len(block) >= RAW_BLOCK_CUSTOMERS):
            yield block
            block, events = [], 0
        block.append(item)
        events += n
    if block:
        yield block


@dataclass
class Predictor:
    """Validated requests in, predictions and explanations out; one per service worker."""

    model: ChurnModel
    info: ModelInfo
    policy: RiskPolicy
    playbook: Playbook

    @classmethod
    def from_settings(cls, settings: Settings) -> Predictor:
        model, info = load_serving_model(settings)
        return cls(
            model,
            info,
            RiskPolicy(settings.risk_high, settings.risk_medium),
            load_playbook(settings.playbook),
        )

    def __post_init__(self) -> None:
        self._names = self.model.feature_names
        self._known = set(self._names)
        self._units = {i.name: i.unit for i in self.model.catalogue}
        self._signed = {i.name: i.signed for i in self.model.catalogue}
        self._explainer = Explainer(self.model.catalogue, self.model.reference, self.playbook)
        if self.playbook is not DEFAULT_PLAYBOOK:  # the default one names columns only some data sets have
            for unread in self._explainer.unread_conditions():
                log.warning("playbook: %s", unread)
        fs = self.model.feature_set
        self._event_types = set(fs.event_types)
        self._attributes = set(fs.attributes)
        self._levels = {c: set(v) for c, v in self.model.categories.items()}

    # ---------------------------------------------------------------------- request checks

    def _check_record(self, i: int, record: dict[str, Any], errors: RequestErrors) -> None:
        loc = ("customers", i, "features")
        for name in record:
            if name not in self._known:
                errors.add((*loc, name), f"unknown feature '{name}'; this model has {len(self._names)} features "
                                         "(the feature catalogue lists them)", name)  # fmt: skip
        missing = [n for n in self._names if n not in record]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            errors.add(
                loc, f"missing feature(s) {', '.join(missing[:5])}{more} (send null for an unknown value)"
            )
        for name, value in record.items():
            if name not in self._known or value is None:
                continue
            if name in self._levels:
                if not isinstance(value, str):
                    errors.add((*loc, name), "expected a category (text)", value)
                elif value not in self._levels[name]:
                    known = ", ".join(sorted(self._levels[name])[:10])
                    errors.add((*loc, name), f"unknown category '{value}'; known: {known}", value)
                continue
            if isinstance(value, str):
                errors.add((*loc, name), "expected a number or null", value)
            elif not self._signed.get(name, True) and value < 0:
                errors.add((*loc, name), f"must not be negative (a {self._units[name]})", value)
            elif name == "mrr" and value < 0:
                errors.add((*loc, name), "must not be negative", value)

    def _check_raw(self, i: int, c: CustomerIn, errors: RequestErrors) -> None:
        for j, e in enumerate(c.events or []):
            if e.event_type not in self._event_types:
                known = ", ".join(sorted(self._event_types))
                errors.add(("customers", i, "events", j, "event_type"),
                           f"unknown event type '{e.event_type}'; this model knows: {known}", e.event_type)  # fmt: skip
        for j, s in enumerate(c.subscriptions or []):
            if s.end is not None and _naive_utc(s.end) < _naive_utc(s.start):
                errors.add(("customers", i, "subscriptions", j, "end"), "end is before start", str(s.end))
            if s.plan is not None and "plan" in self._levels and s.plan not in self._levels["plan"]:
                known = ", ".join(sorted(self._levels["plan"])[:10])
                errors.add(("customers", i, "subscriptions", j, "plan"), f"unknown category '{s.plan}'; known: {known}",
                           s.plan)  # fmt: skip
        if c.profile is not None:
            self._check_profile(i, c.profile, errors)

    def _check_profile(self, i: int, p: ProfileIn, errors: RequestErrors) -> None:
        for attr, value in p.attributes.items():
            loc = ("customers", i, "profile", "attributes", attr)
            if attr not in self._attributes:
                known = ", ".join(sorted(self._attributes)) or "none"
                errors.add(loc, f"unknown attribute '{attr}'; this model uses: {known}", attr)
                continue
            column = f"attr_{slug(attr)}"
            if value is None:
                continue
            if column in self._levels:
                if str(value) not in self._levels[column]:
                    known = ", ".join(sorted(self._levels[column])[:10])
                    errors.add(loc, f"unknown category '{value}'; known: {known}", value)
            elif isinstance(value, str):
                errors.add(loc, "expected a number (this attribute is numeric)", value)
        for field_name, column in (("plan", "plan"), ("segment", "segment")):
            value = getattr(p, field_name)
            if value is not None and column in self._levels and value not in self._levels[column]:
                known = ", ".join(sorted(self._levels[column])[:10])
                errors.add(
                    ("customers", i, "profile", field_name),
                    f"unknown category '{value}'; known: {known}",
                    value,
                )

    def check(self, customers: list[CustomerIn]) -> None:
        """Everything the model needs of a request; raises ValidationError naming each bad field."""
        errors = RequestErrors("request")
        seen: set[str] = set()
        for i, c in enumerate(customers):
            if c.customer_id in seen:
                errors.add(
                    ("customers", i, "customer_id"), f"duplicate customer_id '{c.customer_id}' in the batch"
                )
            seen.add(c.customer_id)
            if c.features is not None:
                self._check_record(i, c.features, errors)
            else:
                self._check_raw(i, c, errors)
        errors.raise_if_any()

    # ---------------------------------------------------------------------- request -> feature frame

    def features(
        self, customers: list[CustomerIn], stop: Stop = NEVER
    ) -> tuple[pd.DataFrame, list[pd.Timestamp]]:
        """One feature row per customer (request order) and its as-of time; raises ValidationError."""
        self.check(customers)
        as_ofs = [(pd.Timestamp(c.as_of) if c.as_of else default_as_of()) for c in customers]
        parts: list[pd.DataFrame] = []
        records = [i for i, c in enumerate(customers) if c.features is not None]
        if records:
            table = self._record_table([customers[i].features or {} for i in records])
            table.insert(0, "customer_id", [customers[i].customer_id for i in records])
            parts.append(table.set_axis(records))
        raw = [(i, c) for i, c in enumerate(customers) if c.features is None]
        for block in _blocks(raw):
            stop.check()
            built = self._raw_features([c for _, c in block], [as_ofs[i] for i, _ in block], stop)
            parts.append(built.set_axis([i for i, _ in block]))
        out = pd.concat(parts).sort_index() if len(parts) > 1 else parts[0]
        return out.reset_index(drop=True), as_ofs

    def _record_table(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Feature records as a frame with the model's dtypes (numbers as float, missing as NaN)."""
        nan = float("nan")
        columns: dict[str, Any] = {}
        for name in self._names:
            values = [r.get(name) for r in records]
            if name in self._levels:
                columns[name] = pd.Series(values, dtype=object)
            else:
                columns[name] = np.array([nan if v is None else v for v in values], dtype=float)
        return pd.DataFrame(columns)

    def _raw_frames(
        self, customers: list[CustomerIn]
    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
        """The contract tables (customers, events, subscriptions) of raw-behaviour customers."""
        profiles, subs = [], []
        events: dict[str, list[Any]] = {
            "customer_id": [],
            "timestamp": [],
            "event_type": [],
            "value": [],
            "user_id": [],
        }
        for c in customers:
            p = c.profile or ProfileIn()
            profiles.append({"customer_id": c.customer_id, "signup_date": _opt_ts(p.signup_date), "plan": p.plan,
                             "segment": p.segment, "mrr": p.mrr, "csm_owner": p.csm_owner, **p.attributes})  # fmt: skip
            for e in c.events or []:
                events["customer_id"].append(c.customer_id)
                events["timestamp"].append(_naive_utc(e.timestamp))
                events["event_type"].append(e.event_type)
                events["value"].append(e.value)
                events["user_id"].append(None if e.user_id is None else str(e.user_id))
            subs += [{"customer_id": c.customer_id, "start": _naive_utc(s.start), "end": _opt_ts(s.end), "mrr": s.mrr,
                      "plan": s.plan, "seats": s.seats} for s in c.subscriptions or []]  # fmt: skip
        customers_frame = pd.DataFrame(profiles)
        for a in self.model.feature_set.attributes:
            if a not in customers_frame:
                customers_frame[a] = None
        events_frame = pd.DataFrame(events)
        events_frame["timestamp"] = pd.to_datetime(events_frame["timestamp"])
        if not subs:
            return customers_frame, events_frame, None
        subs_frame = pd.DataFrame(subs, columns=["customer_id", "start", "end", "mrr", "plan", "seats"])
        subs_frame["start"] = pd.to_datetime(subs_frame["start"])
        subs_frame["end"] = pd.to_datetime(subs_frame["end"])
        return customers_frame, events_frame, subs_frame

    def _raw_features(
        self, customers: list[CustomerIn], as_ofs: list[pd.Timestamp], stop: Stop
    ) -> pd.DataFrame:
        """Features of raw behaviour, each customer as of its own date, in one pass (the training code)."""
        customers_frame, events_frame, subs_frame = self._raw_frames(customers)
        rows = pd.DataFrame({"customer_id": [c.customer_id for c in customers], "observation_date": as_ofs})
        stop.check()
        con = connect(_ONLINE_DUCKDB, spill=False)
        try:
            fs = self.model.feature_set
            tables = load_contract_frames(con, customers_frame, events_frame, subs_frame, fs.attributes)
            stop.check()
            return build_features(tables, rows, fs)  # rows in the order given
        finally:
            con.close()

    # ---------------------------------------------------------------------- answers

    def _prediction(self, cid: str, as_of: pd.Timestamp, s: pd.Series) -> dict[str, Any]:
        mrr = float(s["mrr"])
        known = mrr == mrr  # not NaN
        return {
            "customer_id": cid, "as_of": as_of.date(), "churn_probability": float(s["probability"]),
            "health_score": int(s["health_score"]), "risk_tier": str(s["risk_tier"]), "mrr": mrr if known else None,
            "revenue_at_risk": float(s["revenue_at_risk"]) if known else None,
            "horizon_days": self.info.horizon_days, "model_version": self.info.version,
        }  # fmt: skip

    def predict(self, customers: list[CustomerIn], stop: Stop = NEVER) -> PredictResponse:
        features, as_ofs = self.features(customers, stop)
        stop.check()
        scored = score_features(self.model, features, self.policy)
        preds = [self._prediction(c.customer_id, as_ofs[i], scored.iloc[i]) for i, c in enumerate(customers)]
        return PredictResponse(model=self.info, predictions=[Prediction(**p) for p in preds])

    def explain(
        self, customers: list[CustomerIn], top_k: int = REASONS_SHOWN, stop: Stop = NEVER
    ) -> ExplainResponse:
        """Predictions with the reasons the account page shows (`churnml.explain`): the same sentences,
        groups, comparisons and plays."""
        features, as_ofs = self.features(customers, stop)
        stop.check()
        scored = score_features(self.model, features, self.policy)
        contrib, base = self.model.contributions(features)
        needed = (scored["risk_tier"] != "low").to_numpy()
        out = []
        for start in range(0, len(customers), RECORD_BLOCK):
            stop.check()
            block = slice(start, start + RECORD_BLOCK)
            explained = self._explainer.explain(features.iloc[block], contrib[block], needed[block], top_k,
                                                as_of=as_ofs[block])  # fmt: skip
            for k, a in enumerate(explained):
                i = start + k
                out.append(Explanation(**self._prediction(customers[i].customer_id, as_ofs[i], scored.iloc[i]),
                                       base_value=float(base[i]), raw_log_odds=float(base[i] + contrib[i].sum()),
                                       action_needed=a.action_needed, summary=a.headline,
                                       reasons=[_reason(r) for r in a.problems],
                                       protective=[_reason(r) for r in a.protective],
                                       context=[_reason(r) for r in a.context]))  # fmt: skip
        return ExplainResponse(model=self.info, explanations=out)


def _reason(r: Reason) -> ReasonOut:
    return ReasonOut(**{k: getattr(r, k) for k in ReasonOut.model_fields})


def _as_json(func: Callable[..., BaseModel], customers: list[CustomerIn], *args: Any, stop: Stop) -> Response:
    """``func``'s answer already serialised, so a large one is not turned into JSON on the event loop.

    The request's customers are released here too (the list is emptied in place): freeing a request
    of 200,000 events takes ~40 ms, which BentoML would otherwise spend on the event loop.
    """
    try:
        result = func(customers, *args, stop=stop)
        stop.check()
        return Response(result.model_dump_json().encode(), media_type="application/json")
    finally:
        customers.clear()


async def answer(
    compute: Compute | None, func: Callable[..., Any], customers: list[CustomerIn], *args: Any
) -> Any:
    """``func(customers, *args)``: a few feature records on the event loop (a few ms, no thread hand-off),
    anything larger (raw behaviour, many records) in a worker thread that stops if the request ends."""
    light = len(customers) <= INLINE_RECORDS and all(c.features is not None for c in customers)
    if light or compute is None:
        return func(customers, *args)
    return await compute.run(_as_json, func, customers, *args)
