"""What the loaded data holds: its event types, what each type's value means, its attributes' kinds.

A value's meaning decides which features are built from it (`churnml.features.definitions`): summing
feature ids or averaging seat deltas gives sentences that mean nothing. It comes from the spec's
``event_values`` first, then the built-in vocabulary (`churnml.schema.EVENT_TYPES`), then the data:
no values -> none; signed whole numbers -> a quantity; whole numbers within 0-10 -> a score; anything
else -> an amount. Identifiers cannot be told from amounts by their numbers, so they are never inferred:
`churnml validate` prints every inference, and the spec overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

from churnml.data.tables import ContractTables, EventTypeStats
from churnml.engine import is_numeric_type
from churnml.features.sets import FeatureSet
from churnml.schema import EVENT_TYPES, EventValue
from churnml.spec import DatasetSpec

__all__ = ["ValueMeaning", "infer_feature_set", "resolve_event_values"]


@dataclass(frozen=True)
class ValueMeaning:
    """An event type's value meaning, where it came from, and anything about the data that disagrees."""

    event_type: str
    value: EventValue
    source: str  # spec | vocabulary | data
    note: str  # how the data looks, or why the meaning was inferred
    warning: str | None = None


def _infer(stats: EventTypeStats) -> tuple[EventValue, str]:
    if stats.valued == 0:
        return EventValue("none"), "no values"
    span = f"{_num(stats.low)} to {_num(stats.high)}"
    if stats.negative:
        if stats.fractional == 0:
            return EventValue("quantity"), f"signed whole numbers ({span}): a quantity that changes"
        return EventValue("amount"), f"signed numbers ({span}): an amount"
    low, high = stats.low or 0.0, stats.high or 0.0
    if stats.fractional == 0 and high <= 10:
        scale = (0.0 if low < 1 else 1.0, 5.0 if high <= 5 else 10.0)
        return EventValue(
            "score", scale
        ), f"whole numbers {span}: a score on {_num(scale[0])}-{_num(scale[1])}"
    return EventValue("amount"), f"numbers {span}: an amount (declare identifiers and categories in the spec)"


def _looks(stats: EventTypeStats) -> str:
    if stats.valued == 0:
        return "no values"
    return f"{stats.valued:,} values from {_num(stats.low)} to {_num(stats.high)}"


def _num(x: float | None) -> str:
    return "?" if x is None else (f"{x:g}")


def _check(value: EventValue, stats: EventTypeStats) -> str | None:
    """What in the data contradicts a declared meaning."""
    if value.meaning == "none":
        return None
    if stats.valued == 0:
        return f"declared {value.meaning}, but no event carries a value"
    if (
        value.meaning == "score"
        and value.scale
        and ((stats.low or 0) < value.scale[0] or (stats.high or 0) > value.scale[1])
    ):
        return (f"declared a score on {_num(value.scale[0])}-{_num(value.scale[1])}, but values run from "
                f"{_num(stats.low)} to {_num(stats.high)}")  # fmt: skip
    if value.meaning in ("identifier", "category") and stats.fractional:
        return f"declared {value.meaning}, but {stats.fractional:,} values are not whole numbers"
    return None


def resolve_event_values(tables: ContractTables, spec: DatasetSpec) -> list[ValueMeaning]:
    """Every event type of the loaded events with its value meaning: the spec's, the vocabulary's or
    inferred from the data (in event type order)."""
    out = []
    for t, stats in tables.event_stats.items():
        declared = spec.event_values.get(t)
        known = EVENT_TYPES.get(t)
        if declared is not None:
            value, source = declared.to_value(), "spec"
        elif known is not None and known.values is not None:
            value, source = known.values, "vocabulary"
        else:
            value, note = _infer(stats)
            out.append(ValueMeaning(t, value, "data", note))
            continue
        warning = _check(value, stats)
        if stats.valued == 0 and value.meaning != "none":  # nothing to compute from: no columns
            value = EventValue("none")
        out.append(ValueMeaning(t, value, source, _looks(stats), warning))
    return out


def infer_feature_set(tables: ContractTables, spec: DatasetSpec) -> FeatureSet:
    """The event types, their value meanings and the attribute kinds of the loaded contract tables."""
    meanings = resolve_event_values(tables, spec)
    if not meanings:
        raise ValueError("events: the table is empty; churnml needs behaviour to build features from")
    attributes = tuple(spec.customers.attributes) if spec.customers else ()
    kinds = tables.column_types("customers") if attributes else {}
    categorical = tuple(a for a in attributes if not is_numeric_type(str(kinds.get(a))))
    return FeatureSet(
        event_types=tuple(m.event_type for m in meanings),
        event_values=tuple((m.event_type, m.value) for m in meanings if m.value.meaning != "none"),
        attributes=attributes,
        categorical_attributes=categorical,
        term_months=spec.subscriptions.term_months if spec.subscriptions else 1,
    )
