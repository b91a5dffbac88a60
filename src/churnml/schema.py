"""The data contract: the tables churnml understands, their columns and types.

Every source (Parquet/CSV files, a DuckDB database) is mapped onto these tables by a dataset spec
(:mod:`churnml.spec`); everything downstream (validation, labels, features) reads only contract columns.
Timestamps are naive UTC; ids are strings.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Column", "TableContract", "CONTRACT", "EVENT_VOLUME_SQL", "KIND_LABELS", "VALUE_MEANINGS", "MORE_IS", "EventValue",
    "EventVocabulary", "EVENT_TYPES",
]  # fmt: skip


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "id" | "string" | "number" | "timestamp"
    required: bool
    description: str


@dataclass(frozen=True)
class TableContract:
    name: str
    columns: tuple[Column, ...]
    required_table: bool
    description: str

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no contract column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


KIND_LABELS = {
    "id": "an identifier (text or integer)",
    "string": "text",
    "number": "a number",
    "timestamp": "a date or timestamp",
}

CONTRACT: dict[str, TableContract] = {
    "customers": TableContract(
        name="customers",
        required_table=False,
        description="One row per customer (account) with static attributes.",
        columns=(
            Column("customer_id", "id", True, "Unique account id."),
            Column("name", "string", False, "Account (company) name, as CSMs know it; never a feature."),
            Column("signup_date", "timestamp", False, "When the account started."),
            Column("plan", "string", False, "Current plan name."),
            Column("segment", "string", False, "Customer segment (e.g. SMB, Mid-Market, Enterprise)."),
            Column("mrr", "number", False, "Monthly recurring revenue; must be >= 0."),
            Column("csm_owner", "string", False, "Customer Success Manager owning the account."),
        ),
    ),
    "events": TableContract(
        name="events",
        required_table=True,
        description=(
            "Typed behaviour events: product usage, support tickets, NPS responses, payments, seat changes..."
        ),
        columns=(
            Column("customer_id", "id", True, "Account the event belongs to."),
            Column("timestamp", "timestamp", True, "When it happened (converted to naive UTC)."),
            Column("event_type", "string", True, "What happened (login, support_ticket, nps_response, ...)."),
            Column("value", "number", False, "Numeric payload: amount, score, seat delta, CSAT..."),
            Column("user_id", "id", False, "End user within the account, for multi-user products."),
        ),
    ),
    "subscriptions": TableContract(
        name="subscriptions",
        required_table=False,
        description="Subscription periods; needed for cancellation churn.",
        columns=(
            Column("customer_id", "id", True, "Account id."),
            Column("start", "timestamp", True, "Start of the subscription period."),
            Column("end", "timestamp", False, "End or cancel date; empty while active."),
            Column("mrr", "number", False, "MRR during the period; must be >= 0."),
            Column("plan", "string", False, "Plan during the period."),
            Column("seats", "number", False, "Seats purchased during the period."),
        ),
    ),
}


# The daily summary of the events table that validation leaves beside it (``event_volume``): events per
# day and type, and how the values look (how many, lowest, highest, how many are negative or not whole),
# which volume checks and value-meaning inference read instead of scanning the events again.
EVENT_VOLUME_SQL = (
    'SELECT "timestamp"::DATE AS day, event_type, count(*) AS events, count(value) AS valued, '
    "min(value) AS value_min, max(value) AS value_max, count(*) FILTER (value < 0) AS negative, "
    "count(*) FILTER (value <> round(value)) AS fractional FROM events GROUP BY ALL"
)

VALUE_MEANINGS = ("amount", "score", "quantity", "identifier", "category", "none")
MORE_IS = ("safer", "riskier", "either")


@dataclass(frozen=True)
class EventValue:
    """What an event type's ``value`` means, which decides the features built from it.

    ``amount``: money or another total (sums, means, the latest); ``score``: a rating on ``scale``
    (latest, mean, lowest and the date of the latest), with optional named ``bands`` (NPS detractors);
    ``quantity``: a signed change of ``unit`` (net sums: "5 seats removed"); ``identifier`` and
    ``category``: labels (distinct counts, never summed); ``none``: no value is used.
    """

    meaning: str = "none"
    scale: tuple[float, float] | None = None
    bands: tuple[tuple[str, float, float], ...] = ()  # (name, lowest, highest) within the scale
    unit: str = ""  # quantity: what changes ("seats")
    up: str = "added"  # quantity: the verb of an increase
    down: str = "removed"  # quantity: the verb of a decrease
    up_is: str = "safer"  # quantity: an increase is safer, riskier or either

    def __post_init__(self) -> None:
        if self.meaning not in VALUE_MEANINGS:
            raise ValueError(
                f"value meaning must be one of {', '.join(VALUE_MEANINGS)}, got {self.meaning!r}"
            )
        if self.meaning == "score" and self.scale is None:
            raise ValueError("a score needs its scale, e.g. [0, 10]")
        if self.scale is not None and not self.scale[0] < self.scale[1]:
            raise ValueError(f"a score's scale must run from low to high, got {list(self.scale)}")
        if self.up_is not in MORE_IS:
            raise ValueError(f"up_is must be one of {', '.join(MORE_IS)}, got {self.up_is!r}")

    def band(self, score: float) -> str | None:
        """The named band a score falls in ("detractor"), if any."""
        return next((name for name, lo, hi in self.bands if lo <= score <= hi), None)


@dataclass(frozen=True)
class EventVocabulary:
    """How CSM-facing text names an event type, what its value means, and how it reads for risk.

    ``more_is`` says whether more of these events is safer (logins), riskier (failed payments) or
    either (NPS answers): it orients the comparison with retained accounts. ``group`` is the reason
    group plays are chosen by. ``values`` is None when the meaning is left to the data (inferred).
    """

    description: str
    plural: str  # "logins"
    singular: str  # "login"
    value: str = "value"  # what the value is called: "CSAT", "NPS", "amount"
    actionable: bool = True
    group: str = "usage"  # usage | support | billing | feedback | onboarding | account
    more_is: str = "safer"
    distinct: str = ""  # identifiers and categories: "different features used"
    values: EventValue | None = None

    @property
    def distinct_phrase(self) -> str:
        return self.distinct or f"different {self.value} values among {self.plural}"


_NPS_BANDS = (("detractor", 0.0, 6.0), ("passive", 7.0, 8.0), ("promoter", 9.0, 10.0))
_CSAT_BANDS = (("unhappy", 1.0, 2.0), ("neutral", 3.0, 3.0), ("happy", 4.0, 5.0))

# The event vocabulary the simulator writes and the catalogue knows by name. Sources may use other
# types too (mapped, or kept as they are); features are generated per type from the data, and a spec
# names unknown types with `event_labels` and says what their values mean with `event_values`.
EVENT_TYPES: dict[str, EventVocabulary] = {
    "login": EventVocabulary(
        "A user signed in to the product.", "logins", "login", values=EventValue("none")
    ),
    "feature_use": EventVocabulary(
        "A user used a core product feature (value = feature id).", "feature uses", "feature use", "feature",
        distinct="different features used", values=EventValue("identifier"),
    ),
    "onboarding_step": EventVocabulary(
        "An onboarding step was completed (value = step number).", "onboarding steps", "onboarding step",
        "step", group="onboarding", distinct="different onboarding steps done", values=EventValue("category"),
    ),
    "onboarding_completed": EventVocabulary(
        "The account finished onboarding.", "onboarding completions", "onboarding completion",
        group="onboarding", values=EventValue("none"),
    ),
    "support_ticket": EventVocabulary(
        "A support ticket was opened (value = CSAT 1-5 given when it closed).", "support tickets",
        "support ticket", "CSAT", group="support", more_is="riskier",
        values=EventValue("score", (1.0, 5.0), _CSAT_BANDS),
    ),
    "nps_response": EventVocabulary(
        "An NPS survey answer (value = score 0-10).", "NPS answers", "NPS answer", "NPS", group="feedback",
        more_is="either", values=EventValue("score", (0.0, 10.0), _NPS_BANDS),
    ),
    "payment_succeeded": EventVocabulary(
        "An invoice was paid (value = amount).", "payments", "payment", "amount", group="billing",
        values=EventValue("amount"),
    ),
    "payment_failed": EventVocabulary(
        "A payment attempt failed (value = amount due).", "failed payments", "failed payment", "amount due",
        group="billing", more_is="riskier", values=EventValue("amount"),
    ),
    "seat_change": EventVocabulary(
        "Seats purchased changed (value = delta, negative for contraction).", "seat changes", "seat change",
        "seats", group="account", more_is="either", values=EventValue("quantity", unit="seats"),
    ),
    "plan_change": EventVocabulary(
        "Plan changed (value = MRR delta, negative for a downgrade).", "plan changes", "plan change", "MRR",
        group="account", more_is="either",
        values=EventValue("quantity", unit="of MRR", up="gained from upgrades", down="lost to downgrades"),
    ),
    "purchase": EventVocabulary(
        "A purchase (a basket).", "purchases", "purchase", "spend", values=EventValue("amount")
    ),
    "coupon_redemption": EventVocabulary(
        "A coupon was redeemed.", "coupon redemptions", "coupon redemption", more_is="either"
    ),
}  # fmt: skip
