"""What the prediction API takes and returns: pydantic models, request limits and the error collector.

Requests are strict where lax parsing would guess: numbers must be JSON numbers (``true`` is not 1),
dates and timestamps must be text (``0`` is not 1970-01-01). Checks that need the model (feature
names, categories, event types) live in :mod:`churnml.service.predictor` and raise the same kind of
``ValidationError``, so every bad input gets a 400 naming the field.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "MAX_BATCH",
    "MAX_EVENTS",
    "MAX_REQUEST_CONTAINERS",
    "MAX_REQUEST_EVENTS",
    "MAX_REQUEST_OBJECTS",
    "MAX_REQUEST_VALUES",
    "Customers",
    "CustomerIn",
    "EventIn",
    "ExplainResponse",
    "Explanation",
    "ModelInfo",
    "Prediction",
    "PredictResponse",
    "ProfileIn",
    "ReasonOut",
    "RequestErrors",
    "SubscriptionIn",
    "TopK",
]

MAX_BATCH = 1000  # customers per request
MAX_EVENTS = 20_000  # events per customer in a raw-behaviour request
MAX_REQUEST_EVENTS = 200_000  # events in one request, all customers together
# JSON objects in one body: the events plus room for customers, profiles and subscriptions. The parser
# stops as soon as a body holds more, before it has built them all.
MAX_REQUEST_OBJECTS = MAX_REQUEST_EVENTS + 100_000
# Arrays and values (an upper bound: commas) in one body, counted in the raw bytes before the parse:
# arrays cost the parser more than objects and never reach its object hook, and it holds the
# interpreter lock for the whole parse. A full request has an events list per customer, and at most
# 2,000 features and 100 attributes per customer and about 8 fields per event.
MAX_REQUEST_CONTAINERS = MAX_REQUEST_OBJECTS + 4 * MAX_BATCH
MAX_REQUEST_VALUES = MAX_BATCH * 2_200 + MAX_REQUEST_EVENTS * 8
LIMIT = 1e12  # no real count, amount or MRR is larger; bigger numbers overflow sums to infinity
_EARLIEST, _LATEST = datetime(1970, 1, 1), datetime(2200, 1, 1)


def _text_only(what: str) -> Any:
    """A validator refusing non-text: lax parsing reads the number 0 as the Unix epoch."""

    def check(value: Any) -> Any:
        if isinstance(value, date | datetime) or value is None or isinstance(value, str):
            return value
        raise PydanticCustomError("text_expected", "expected {what} as text, got {kind}",
                                  {"what": what, "kind": type(value).__name__})  # fmt: skip

    return BeforeValidator(check)


def _not_bool(value: Any) -> Any:
    """JSON ``true`` is not the integer 1 (Python's bool is an int, so lax parsing took it)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "expected a number, got a boolean")
    return value


def _in_range(ts: datetime) -> datetime:
    try:
        naive = ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts
    except OverflowError:  # year 1 or 9999 shifted by its offset
        raise ValueError(f"must be between {_EARLIEST.date()} and {_LATEST.date()}") from None
    if not _EARLIEST <= naive < _LATEST:
        raise ValueError(f"must be between {_EARLIEST.date()} and {_LATEST.date()}")
    return ts


Text = Annotated[str, Field(min_length=1, max_length=200)]
# strict: a JSON number (an integer is fine), never a boolean or numeric text
Count = Annotated[float, Field(ge=0, le=LIMIT, strict=True)]
Number = Annotated[float, Field(ge=-LIMIT, le=LIMIT, strict=True)]
Seats = Annotated[float, Field(ge=0, le=1e7, strict=True)]
Timestamp = Annotated[
    datetime, _text_only("an ISO 8601 timestamp, e.g. 2025-06-01T10:00:00Z"), AfterValidator(_in_range)
]
Day = Annotated[date, _text_only("a date (YYYY-MM-DD)"), Field(ge=_EARLIEST.date(), lt=_LATEST.date())]
TopK = Annotated[int, BeforeValidator(_not_bool), Field(ge=1, le=20)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_strip_whitespace=True)


class EventIn(_Strict):
    """One event of the customer's recent behaviour (the contract's events table)."""

    timestamp: Timestamp
    event_type: Text
    value: Number | None = None
    user_id: Annotated[str, Field(max_length=200)] | Annotated[int, BeforeValidator(_not_bool)] | None = (
        Field(default=None, description="Who did it (text or integer id); counts distinct active users.")
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


def refuse(loc: tuple[str | int, ...], message: str, title: str = "request") -> ValidationError:
    """One field error as a ValidationError (for checks that stop at the first problem)."""
    errors = RequestErrors(title)
    errors.add(loc, message)
    return ValidationError.from_exception_data(errors.title, errors.items)
