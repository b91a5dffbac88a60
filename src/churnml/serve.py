"""The prediction service's logic: request models, validation, model import, predictor, middleware.

``serving/service.py`` only wires these into BentoML. Requests are pydantic models (BentoML turns a
pydantic ``ValidationError`` into a 400 naming the field); checks that need the model (feature names,
categorical levels, event types) raise the same kind of error, so every bad input gets a 400 with the
offending field's location and never a 500.
"""

from __future__ import annotations

import functools
import gc
import hmac
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from churnml.config import Settings
from churnml.explain import AccountReasons, Explainer, Playbook, Reason, load_playbook
from churnml.features.definitions import slug
from churnml.features.online import features_from_frames
from churnml.model import ChurnModel
from churnml.pages import PUBLIC_PATHS, TOKEN_COOKIE  # the login form lets browsers in with a cookie
from churnml.score import RiskPolicy, score_features

__all__ = [
    "MAX_BATCH",
    "answer",
    "JSONOnlyMiddleware",
    "OpenAPIMiddleware",
    "calm_garbage_collector",
    "quiet_bad_input_logs",
    "CustomerIn",
    "Predictor",
    "ServiceUnavailableMiddleware",
    "TokenAuthMiddleware",
    "import_registered_model",
    "load_serving_model",
    "packaged_model_ref",
]

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # customers per request
PACKAGED_MODEL = "churn:latest"  # what `bentoml build` packages and a built bento serves
MAX_EVENTS = 20_000  # events per customer in a raw-behaviour request
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

Text = Annotated[str, Field(min_length=1, max_length=200)]
LIMIT = 1e12  # no real count, amount or MRR is larger; bigger numbers overflow sums to infinity
Count = Annotated[float, Field(ge=0, le=LIMIT)]
Number = Annotated[float, Field(ge=-LIMIT, le=LIMIT)]
Seats = Annotated[float, Field(ge=0, le=1e7)]
MAX_REQUEST_EVENTS = 200_000  # events in one request, all customers together
MAX_BODY_BYTES = 64 * 1024 * 1024
_EARLIEST, _LATEST = datetime(1970, 1, 1), datetime(2200, 1, 1)


def _in_range(ts: datetime) -> datetime:
    try:
        naive = ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts
    except OverflowError:  # year 1 or 9999 shifted by its offset
        raise ValueError(f"must be between {_EARLIEST.date()} and {_LATEST.date()}") from None
    if not _EARLIEST <= naive < _LATEST:
        raise ValueError(f"must be between {_EARLIEST.date()} and {_LATEST.date()}")
    return ts


Timestamp = Annotated[datetime, AfterValidator(_in_range)]
Day = Annotated[date, Field(ge=_EARLIEST.date(), lt=_LATEST.date())]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


class EventIn(_Strict):
    """One event of the customer's recent behaviour (the contract's events table)."""

    timestamp: Timestamp
    event_type: Text
    value: Number | None = None
    user_id: Annotated[str, Field(max_length=200)] | int | None = Field(
        default=None, description="Who did it (text or integer id); counts distinct active users."
    )


class SubscriptionIn(_Strict):
    start: Timestamp
    end: Timestamp | None = None
    mrr: Count | None = None
    plan: Text | None = None
    seats: Seats | None = None

    @model_validator(mode="after")
    def _whole_seats(self) -> SubscriptionIn:
        if self.seats is not None and 0 < self.seats < 1:
            raise ValueError("seats must be 0 or at least 1")
        return self


class ProfileIn(_Strict):
    signup_date: Timestamp | None = None
    plan: Text | None = None
    segment: Text | None = None
    mrr: Count | None = None
    csm_owner: Text | None = None
    attributes: dict[Text, Number | Text | None] = Field(default_factory=dict, max_length=100)


class CustomerIn(_Strict):
    """A customer to score: either ready features, or raw behaviour (profile + events [+ subscriptions])."""

    customer_id: Text
    as_of: Day | None = Field(
        default=None,
        description="Observation date: features use data strictly before it (UTC); default: tomorrow.",
    )
    features: dict[Text, Number | Text | None] | None = Field(default=None, max_length=2000)
    profile: ProfileIn | None = None
    events: list[EventIn] | None = Field(default=None, max_length=MAX_EVENTS)
    subscriptions: list[SubscriptionIn] | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> CustomerIn:
        raw = self.profile is not None or self.events is not None or self.subscriptions is not None
        if self.features is not None and raw:
            raise ValueError(
                "give either 'features' or raw behaviour ('profile', 'events', 'subscriptions'), not both"
            )
        if self.features is None and self.events is None:
            raise ValueError("give 'features' (a feature record) or 'events' (raw behaviour, may be empty)")
        return self


Customers = Annotated[list[CustomerIn], Field(min_length=1, max_length=MAX_BATCH)]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    bento_tag: str
    run_id: str = ""
    horizon_days: int


class Prediction(BaseModel):
    customer_id: str
    as_of: date
    churn_probability: float = Field(description="Calibrated probability of churn within the horizon.")
    health_score: int = Field(
        ge=0, le=100, description="0-100, higher is healthier (100 × chance of staying)."
    )
    risk_tier: Literal["high", "medium", "low"]
    mrr: float | None = Field(description="MRR at the date; null when unknown.")
    revenue_at_risk: float | None = Field(
        description="churn_probability × MRR × months in the horizon; null without MRR."
    )
    horizon_days: int
    model_version: str


class ReasonOut(BaseModel):
    signal: str = Field(description="The reason's key: its group (usage, billing, ...) or a context column.")
    feature: str = Field(description="The feature whose value the sentence states.")
    label: str
    sentence: str = Field(description="The fact in plain words, as the account page shows it.")
    value: float | str | None
    values: dict[str, float | str | None] = Field(description="The numbers (and dates) the sentence quotes.")
    contribution: float = Field(
        description="SHAP value of the reason (its features summed), log-odds; > 0 raises risk."
    )
    direction: Literal["raises risk", "lowers risk"]
    strength: Literal["strong", "moderate", "slight"]
    kind: Literal["problem", "protective", "context"]
    group: str = Field(
        description="usage, support, billing, feedback, onboarding, account, context or table."
    )
    actionable: bool
    comparison: str | None = Field(description="How the value compares with accounts that stayed.")
    percentile: float | None = Field(description="Share of accounts that stayed with a lower value, 0-100.")
    play: str | None = None
    play_action: str | None = None

    @classmethod
    def of(cls, r: Reason) -> ReasonOut:
        return cls(**{k: getattr(r, k) for k in cls.model_fields})


class Explanation(Prediction):
    base_value: float = Field(description="SHAP base value (log-odds); base + all contributions = raw score.")
    raw_log_odds: float
    action_needed: bool = Field(description="False below the medium tier: the account needs no call.")
    summary: str = Field(description="What the risk list says: the first problem, or 'No action needed'.")
    reasons: list[ReasonOut] = Field(
        description="Problems: risk-raising reasons a CSM can act on, with plays."
    )
    protective: list[ReasonOut] = Field(description="What lowers this account's risk.")
    context: list[ReasonOut] = Field(
        description="Facts a CSM cannot change (plan, segment, tenure...): no play."
    )


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[Prediction]


class ExplainResponse(BaseModel):
    model: ModelInfo
    explanations: list[Explanation]


# ------------------------------------------------------------------------------------------ errors


class RequestErrors:
    """Collects field errors and raises them as one pydantic ValidationError (BentoML answers 400)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.items: list[InitErrorDetails] = []

    def add(self, loc: tuple[str | int, ...], message: str, value: Any = None) -> None:
        if len(self.items) < 50:
            self.items.append(
                InitErrorDetails(type=PydanticCustomError("invalid_input", message), loc=loc, input=value)
            )

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationError.from_exception_data(self.title, self.items)


# ------------------------------------------------------------------------------------------ model store


def _load_from_folder(folder: Path) -> ChurnModel:
    return ChurnModel.load(folder)


def import_registered_model(settings: Settings, alias: str | None = None) -> str:
    """Import ``models:/churn@<alias>`` from MLflow into the BentoML model store; return the tag.

    The BentoML version is ``v<registry version>-<run id>``, so re-importing the same version is a
    no-op and a promoted model gets a new tag.
    """
    import bentoml
    from bentoml.exceptions import NotFound
    from mlflow.exceptions import MlflowException

    from churnml.registry import MODEL_NAME, check_tracking_server, file_lock, tracking_uri

    alias = alias or settings.model_alias
    uri = tracking_uri(settings)
    client = check_tracking_server(uri)
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException as err:
        raise LookupError(
            f"no model 'models:/{MODEL_NAME}@{alias}' in the registry at {uri}: {err.message}"
        ) from None
    version = f"v{mv.version}-{(mv.run_id or 'norun')[:12]}"
    tag = f"{MODEL_NAME}:{version}"
    # workers of one service start together: one imports, the others wait and find it in the store
    store = Path(os.environ.get("BENTOML_HOME", settings.bentoml_home))
    with file_lock(store / ".churnml-import.lock", timeout=600, purpose="model import"):
        try:
            bentoml.models.get(tag)
            return tag
        except NotFound:
            pass
        _import_version(client, mv, alias, uri, tag)
    log.info(
        "imported models:/%s/%s (alias %s) into the BentoML store as %s", MODEL_NAME, mv.version, alias, tag
    )
    return tag


def _import_version(client: Any, mv: Any, alias: str, uri: str, tag: str) -> None:
    import bentoml

    from churnml.registry import MODEL_NAME, download_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(f"models:/{MODEL_NAME}/{mv.version}", client, Path(tmp))
        model = _load_from_folder(folder)  # refuse to import a corrupt model
        labels = {"alias": alias, "registry_version": str(mv.version), "run_id": mv.run_id or ""}
        meta = {"registry": f"models:/{MODEL_NAME}/{mv.version}", "tracking_uri": uri,
                "horizon_days": model.horizon_days, "trained_through": str(model.metadata.get("trained_through"))}  # fmt: skip
        with bentoml.models.create(tag, labels=labels, metadata=meta) as bm:
            for name in ("booster.txt", "model.json"):
                shutil.copy2(folder / name, Path(bm.path) / name)


def packaged_model_ref() -> Any:
    """``BentoModel("churn:latest")`` when the store has a churn model, else None.

    Declaring the model on the service makes `bentoml build` package it, but BentoML then refuses to
    start at all without it; undeclared, a service with no model stays alive and reports not ready.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(PACKAGED_MODEL)
    except NotFound:
        return None
    return bentoml.models.BentoModel(PACKAGED_MODEL)


def load_serving_model(settings: Settings) -> tuple[ChurnModel, ModelInfo]:
    """The model to serve: ``CHURNML_BENTO_MODEL`` if set; in a built bento the packaged one; else the
    registry alias (``models:/churn@champion``), imported into the BentoML store."""
    import bentoml
    from bentoml.exceptions import NotFound

    if settings.bento_model:
        tag = settings.bento_model
    elif settings.model_source == "bento":  # a built bento: the model packaged with it
        tag = PACKAGED_MODEL
    else:
        tag = import_registered_model(settings)
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise LookupError(f"BentoML model {tag} is not in the store at {settings.bentoml_home}") from None
    model = _load_from_folder(Path(stored.path))
    labels = stored.info.labels
    info = ModelInfo(
        name=stored.tag.name, version=labels.get("registry_version", str(stored.tag.version)),
        alias=labels.get("alias", ""), bento_tag=str(stored.tag), run_id=labels.get("run_id", ""),
        horizon_days=model.horizon_days,
    )  # fmt: skip
    return model, info


# ------------------------------------------------------------------------------------------ predictor


def default_as_of() -> pd.Timestamp:
    """The next UTC midnight: features then see everything up to now."""
    return pd.Timestamp(datetime.now(UTC).replace(tzinfo=None)).normalize() + pd.Timedelta(days=1)


def _naive_utc(ts: datetime) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


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
        fs = self.model.feature_set
        self._event_types = set(fs.event_types)
        self._attributes = set(fs.attributes)
        self._levels = {c: set(v) for c, v in self.model.categories.items()}

    # ---------------------------------------------------------------------- request -> feature frame

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
        p = c.profile
        if p is None:
            return
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

    def features(self, customers: list[CustomerIn]) -> tuple[pd.DataFrame, list[pd.Timestamp]]:
        """One feature row per customer (request order) and its as-of time; raises ValidationError."""
        errors = RequestErrors("request")
        total = sum(len(c.events or []) for c in customers)
        if total > MAX_REQUEST_EVENTS:
            errors.add(
                ("customers",),
                f"{total:,} events in one request; at most {MAX_REQUEST_EVENTS:,}: split the batch",
            )
            errors.raise_if_any()
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

        as_ofs = [(pd.Timestamp(c.as_of) if c.as_of else default_as_of()) for c in customers]
        frames: dict[int, pd.DataFrame] = {}
        records = [(i, c) for i, c in enumerate(customers) if c.features is not None]
        if records:
            table = self._record_table([c.features or {} for _, c in records])
            table.insert(0, "customer_id", [c.customer_id for _, c in records])
            for k, (i, _) in enumerate(records):
                frames[i] = table.iloc[[k]]
        raw = [(i, c) for i, c in enumerate(customers) if c.features is None]
        by_date: dict[pd.Timestamp, list[int]] = {}
        for i, _ in raw:
            by_date.setdefault(as_ofs[i], []).append(i)
        for as_of, idx in by_date.items():
            built = self._raw_features([customers[i] for i in idx], as_of)
            for k, i in enumerate(idx):
                frames[i] = built.iloc[[k]]
        out = pd.concat([frames[i] for i in range(len(customers))], ignore_index=True)
        return out, as_ofs

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

    def _raw_features(self, customers: list[CustomerIn], as_of: pd.Timestamp) -> pd.DataFrame:
        profiles, events, subs = [], [], []
        for c in customers:
            p = c.profile or ProfileIn()
            profiles.append({"customer_id": c.customer_id, "signup_date": _opt_ts(p.signup_date), "plan": p.plan,
                             "segment": p.segment, "mrr": p.mrr, "csm_owner": p.csm_owner, **p.attributes})  # fmt: skip
            events += [{"customer_id": c.customer_id, "timestamp": _naive_utc(e.timestamp), "event_type": e.event_type,
                        "value": e.value, "user_id": None if e.user_id is None else str(e.user_id)}
                       for e in c.events or []]  # fmt: skip
            subs += [{"customer_id": c.customer_id, "start": _naive_utc(s.start), "end": _opt_ts(s.end), "mrr": s.mrr,
                      "plan": s.plan, "seats": s.seats} for s in c.subscriptions or []]  # fmt: skip
        attrs = list(self.model.feature_set.attributes)
        customers_frame = pd.DataFrame(profiles)
        for a in attrs:
            if a not in customers_frame:
                customers_frame[a] = None
        events_frame = pd.DataFrame(
            events, columns=["customer_id", "timestamp", "event_type", "value", "user_id"]
        )
        events_frame["timestamp"] = pd.to_datetime(events_frame["timestamp"])
        subs_frame = (
            pd.DataFrame(subs, columns=["customer_id", "start", "end", "mrr", "plan", "seats"])
            if subs
            else None
        )
        if subs_frame is not None:
            subs_frame["start"] = pd.to_datetime(subs_frame["start"])
            subs_frame["end"] = pd.to_datetime(subs_frame["end"])
        built = features_from_frames(self.model.feature_set, as_of, events_frame, customers_frame, subs_frame)
        order = {c.customer_id: k for k, c in enumerate(customers)}
        return built.sort_values("customer_id", key=lambda s: s.map(order), kind="stable").reset_index(
            drop=True
        )

    # ---------------------------------------------------------------------- answers

    def _predictions(
        self, customers: list[CustomerIn]
    ) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.Timestamp]]:
        features, as_ofs = self.features(customers)
        scored = score_features(self.model, features, self.policy)
        return features, scored, as_ofs

    def _prediction(self, cid: str, as_of: pd.Timestamp, s: pd.Series) -> dict[str, Any]:
        mrr = float(s["mrr"])
        known = mrr == mrr  # not NaN
        return {
            "customer_id": cid, "as_of": as_of.date(), "churn_probability": float(s["probability"]),
            "health_score": int(s["health_score"]), "risk_tier": str(s["risk_tier"]), "mrr": mrr if known else None,
            "revenue_at_risk": float(s["revenue_at_risk"]) if known else None,
            "horizon_days": self.info.horizon_days, "model_version": self.info.version,
        }  # fmt: skip

    def predict(self, customers: list[CustomerIn]) -> PredictResponse:
        features, scored, as_ofs = self._predictions(customers)
        preds = [self._prediction(c.customer_id, as_ofs[i], scored.iloc[i]) for i, c in enumerate(customers)]
        return PredictResponse(model=self.info, predictions=[Prediction(**p) for p in preds])

    def explain(self, customers: list[CustomerIn], top_k: int = 3) -> ExplainResponse:
        """Predictions with the reasons the account page shows (`churnml.explain`): the same sentences,
        groups, comparisons and plays."""
        features, scored, as_ofs = self._predictions(customers)
        contrib, base = self.model.contributions(features)
        explained: list[AccountReasons] = self._explainer.explain(
            features, contrib, (scored["risk_tier"] != "low").to_numpy(), top_k, as_of=as_ofs
        )
        out = []
        for i, c in enumerate(customers):
            a = explained[i]
            out.append(Explanation(**self._prediction(c.customer_id, as_ofs[i], scored.iloc[i]),
                                   base_value=float(base[i]), raw_log_odds=float(base[i] + contrib[i].sum()),
                                   action_needed=a.action_needed, summary=a.headline,
                                   reasons=[ReasonOut.of(r) for r in a.problems],
                                   protective=[ReasonOut.of(r) for r in a.protective],
                                   context=[ReasonOut.of(r) for r in a.context]))  # fmt: skip
        return ExplainResponse(model=self.info, explanations=out)


async def answer(func: Callable[..., Any], customers: list[CustomerIn], *args: Any) -> Any:
    """Run ``func(customers, *args)``: feature records (a few ms of CPU) on the event loop, raw behaviour
    (DuckDB over the customer's history: tens of ms or more) in a worker thread, so one long request
    does not hold up probes and short requests."""
    if all(c.features is not None for c in customers):
        return func(customers, *args)
    return await anyio.to_thread.run_sync(functools.partial(func, customers, *args))


def _opt_ts(ts: datetime | None) -> pd.Timestamp | None:
    return _naive_utc(ts) if ts is not None else None


# ------------------------------------------------------------------------------------------ middleware

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def _json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


def _cookie(scope: Scope, name: str) -> str:
    """A cookie's value as browsers send it (Starlette quotes values with '/', '=' or spaces)."""
    from starlette.requests import cookie_parser

    return cookie_parser(_header(scope, b"cookie")).get(name, "")


def _is_page(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


class TokenAuthMiddleware:
    """Bearer-token check on every route but the probes, when ``CHURNML_API_TOKEN`` is set.

    API clients send ``Authorization: Bearer <token>``; browsers on the pages (/ui) send the cookie
    set by the login form, and are redirected to it instead of getting a bare 401.
    """

    def __init__(self, app: Any, token: str | None = None) -> None:
        self.app = app
        self.token = token if token is not None else os.environ.get("CHURNML_API_TOKEN") or None

    def _allowed(self, scope: Scope) -> bool:
        scheme, _, credential = _header(scope, b"authorization").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self.token.encode()
        ):  # type: ignore[union-attr]
            return True
        cookie = _cookie(scope, TOKEN_COOKIE) if _is_page(scope["path"]) else ""
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.token.encode())  # type: ignore[union-attr]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            self.token is None
            or scope["type"] not in ("http", "websocket")
            or path in OPEN_PATHS
            or path in PUBLIC_PATHS
        ):
            return await self.app(scope, receive, send)
        if self._allowed(scope):
            return await self.app(scope, receive, send)
        if _is_page(path) and "text/html" in _header(scope, b"accept") and scope["type"] == "http":
            wanted = path + (
                "?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else ""
            )
            target = b"/ui/login?next=" + quote(wanted, safe="/").encode()
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", target), (b"content-length", b"0")]})  # fmt: skip
            return await send({"type": "http.response.body", "body": b""})
        return await _json(send, 401, b'{"error": "missing or wrong bearer token (Authorization: Bearer ...)"}',
                           [(b"www-authenticate", b'Bearer realm="churnml"')])  # fmt: skip


_ERROR_SCHEMA = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong."},
        "detail": {
            "type": "array",
            "description": "One entry per bad field: loc (path to the field), msg, type.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array"},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },  # fmt: skip
        },
    },
}


def fix_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Describe the errors the service really returns (BentoML documents ``detail`` as a string)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["InvalidArgument"] = _ERROR_SCHEMA
    schemas["Error"] = _ERROR_SCHEMA
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, ops in spec.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for op in ops.values():
            responses = op.setdefault("responses", {})
            responses.setdefault("401", {"description": "Missing or wrong bearer token", "content": ref})
            responses.setdefault(
                "503", {"description": "Not ready, or overloaded (see Retry-After)", "content": ref}
            )
            responses.setdefault("504", {"description": "Timed out", "content": ref})
    spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
    }
    return spec


class JSONOnlyMiddleware:
    """API routes take JSON: another declared media type gets 415 before BentoML tries to parse it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and not scope.get("path", "").startswith("/ui")
        ):
            media = _header(scope, b"content-type").split(";")[0].strip().lower()
            if media and media != "application/json":
                return await _json(send, 415, b'{"error": "send the request body as application/json"}')
            length = _header(scope, b"content-length")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                return await _json(send, 413, b'{"error": "request body too large: split the batch"}')
        return await self.app(scope, receive, send)


class BadInputLogFilter(logging.Filter):
    """BentoML logs every rejected request as an ERROR with a traceback that quotes the input.

    A bad request is the client's problem and may carry customer data: log one INFO line without
    the input instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            record.msg, record.args = "rejected request on %s: %d invalid field(s)", (
                (record.args or ("?",))[0], exc.error_count())  # fmt: skip
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def calm_garbage_collector() -> None:
    """Move everything loaded at start-up (libraries, the model) out of the collector's view.

    Full collections then only walk request garbage, which removes the 10-30 ms pauses that made
    the p99 latency of a loaded worker spike.
    """
    gc.collect()
    gc.freeze()


def quiet_bad_input_logs() -> None:
    """Install :class:`BadInputLogFilter` on BentoML's HTTP app logger (idempotent)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, BadInputLogFilter) for f in logger.filters):
        logger.addFilter(BadInputLogFilter())


class OpenAPIMiddleware:
    """Serves BentoML's OpenAPI document (/docs.json) corrected by :func:`fix_openapi`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/docs.json":
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(fix_openapi(json.loads(body))).encode()
        await _json(send, int(start.get("status", 500)), body)


class ServiceUnavailableMiddleware:
    """Sheds load: beyond ``max_inflight`` requests in progress, answer 503 with Retry-After at once."""

    def __init__(self, app: Any, max_inflight: int | None = None, retry_after: int = 1) -> None:
        self.app = app
        self.max_inflight = max_inflight or int(os.environ.get("CHURNML_MAX_INFLIGHT", 64))
        self.retry_after = retry_after
        self.inflight = 0
        self.shed = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.inflight >= self.max_inflight:
            self.shed += 1
            if self.shed % 1000 == 1:
                log.warning("shedding load: %d requests in progress (limit %d), %d shed so far",
                            self.inflight, self.max_inflight, self.shed)  # fmt: skip
            return await _json(send, 503, b'{"error": "overloaded, retry later"}',
                               [(b"retry-after", str(self.retry_after).encode())])  # fmt: skip
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
