"""The data contract: the tables churnml understands, their columns and types.

Every source (Parquet/CSV files, a DuckDB database) is mapped onto these tables by a dataset spec
(:mod:`churnml.spec`); everything downstream (validation, labels, features) reads only contract columns.
Timestamps are naive UTC; ids are strings.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Column", "TableContract", "CONTRACT", "KIND_LABELS", "EventVocabulary", "EVENT_TYPES"]


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


@dataclass(frozen=True)
class EventVocabulary:
    """How CSM-facing text names an event type, and whether a CSM can act on it."""

    description: str
    plural: str  # "logins"
    singular: str  # "login"
    value: str = "value"  # what the value column means for this type: "CSAT score", "amount"
    actionable: bool = True


# The event vocabulary the simulator writes and the catalogue knows by name. Sources may use other
# types too (mapped, or kept as they are); features are generated per type from the data, and a spec
# can name unknown types for CSMs with `event_labels`.
EVENT_TYPES: dict[str, EventVocabulary] = {
    "login": EventVocabulary("A user signed in to the product.", "logins", "login"),
    "feature_use": EventVocabulary(
        "A user used a core product feature.", "feature uses", "feature use", "feature id"
    ),
    "onboarding_step": EventVocabulary(
        "An onboarding step was completed (value = step number).",
        "onboarding steps",
        "onboarding step",
        "step number",
    ),
    "onboarding_completed": EventVocabulary(
        "The account finished onboarding.", "onboarding completions", "onboarding completion"
    ),
    "support_ticket": EventVocabulary(
        "A support ticket was opened (value = CSAT 1-5 given when it closed).",
        "support tickets",
        "support ticket",
        "CSAT score",
    ),
    "nps_response": EventVocabulary(
        "An NPS survey answer (value = score 0-10).", "NPS answers", "NPS answer", "NPS score"
    ),
    "payment_succeeded": EventVocabulary(
        "An invoice was paid (value = amount).", "payments", "payment", "amount paid"
    ),
    "payment_failed": EventVocabulary(
        "A payment attempt failed (value = amount).", "failed payments", "failed payment", "amount due"
    ),
    "seat_change": EventVocabulary(
        "Seats purchased changed (value = delta, negative for contraction).",
        "seat changes",
        "seat change",
        "seats added",
    ),
    "plan_change": EventVocabulary(
        "Plan changed (value = MRR delta, negative for a downgrade).",
        "plan changes",
        "plan change",
        "MRR change",
    ),
    "purchase": EventVocabulary("A purchase (basket line).", "purchases", "purchase", "spend"),
    "coupon_redemption": EventVocabulary("A coupon was redeemed.", "coupon redemptions", "coupon redemption"),
}
