"""The feature set: which columns a model has, fixed when it is trained and saved with it.

It names the event types, what each type's value means (`churnml.schema.EventValue`), the customer
attributes, and the definitions number the columns were computed with; the columns themselves come
from the registry (`churnml.features.definitions`). It imports nothing heavy, so a model loads (and
the MLflow pyfunc imports) without the feature engine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from churnml.features.btyd import BgNbd
from churnml.features.definitions import (
    ACCOUNT_FAMILIES,
    Family,
    event_families,
    family,
    fitted_families,
    slug,
)
from churnml.schema import EventValue

__all__ = [
    "FEATURE_DEFINITION",
    "COMPUTABLE_FROM",
    "DEFINITION_CHANGES",
    "CATEGORICAL",
    "DefinitionChange",
    "FeatureSet",
    "IncomputableDefinitions",
]

CATEGORICAL = ("plan", "segment")
# Bumped when a feature's meaning changes, so a model trained on the old meaning can say so
FEATURE_DEFINITION = 4
# The oldest definitions whose columns this churnml still computes: an older model is refused on load
COMPUTABLE_FROM = 3


class IncomputableDefinitions(ValueError):
    """A feature set built with definitions whose columns this churnml no longer computes."""


@dataclass(frozen=True)
class DefinitionChange:
    """What one feature definition number changed, and the columns (by name ending) it touched."""

    description: str
    column_endings: tuple[str, ...]


DEFINITION_CHANGES = {
    2: DefinitionChange(
        "an event type's last value comes from its latest event with a value (it was empty when the "
        "latest active day had none), and so does the NPS detractor flag",
        ("_last_value", "nps_detractor"),
    ),
    3: DefinitionChange(
        "event values have meanings: identifiers and categories are counted as distinct values instead of "
        "summed, scores keep their latest value, its date, mean and lowest, quantities are net changes; "
        "the NPS detractor flag is gone (the latest NPS score says it)",
        # the columns of the value families (every one new or renamed in 3)
        (
            "_amount_sum_30d",
            "_amount_sum_90d",
            "_amount_mean_30d",
            "_amount_mean_90d",
            "_amount_last",
            "_amount_sum_total",
            "_score_last",
            "_score_mean_30d",
            "_score_mean_90d",
            "_score_min_90d",
            "_score",
            "_net_30d",
            "_net_90d",
            "_net_total",
            "_last_change",
            "_distinct_30d",
            "_distinct_90d",
            "_distinct_total",
        ),
    ),  # fmt: skip
    4: DefinitionChange(
        "new columns, no changed ones: days with each event type since the start and days since its first, and "
        "for the activity types of inactivity churn the BG/NBD chance they continue and the days with them "
        "expected in the horizon",
        ("_active_days_total", "_p_alive", "_expected_days_ahead"),
    ),
}


@dataclass(frozen=True)
class FeatureSet:
    """The shape of the feature table, fixed when a model is trained and saved with it."""

    event_types: tuple[str, ...]
    event_values: tuple[tuple[str, EventValue], ...] = ()  # what each type's value means (default: none)
    attributes: tuple[str, ...] = ()
    categorical_attributes: tuple[str, ...] = ()
    term_months: int = 1
    # snapshot mode (`churnml train --table`): a ready feature table's own columns, no event features
    table_numeric: tuple[str, ...] = ()
    table_categorical: tuple[str, ...] = ()
    definition: int = FEATURE_DEFINITION  # of the features this set was built with
    # columns left out of the model (the leak guard, `churnml.modeling.leaks`): still computed, never used
    dropped: tuple[str, ...] = ()
    # BG/NBD parameters per activity event type, fitted on the development rows (`churnml.features.btyd`),
    # and the horizon its expected days look ahead
    btyd: tuple[tuple[str, BgNbd], ...] = ()
    btyd_horizon_days: int = 0

    @property
    def is_snapshot(self) -> bool:
        return bool(self.table_numeric or self.table_categorical)

    def __post_init__(self) -> None:
        if not self.event_types and not self.is_snapshot:
            raise ValueError("feature set: no event types; features are built from behaviour events")
        slugs = [slug(t) for t in self.event_types]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"event types {list(self.event_types)} collide once made column-safe: {slugs}")
        unknown = sorted({t for t, _ in self.event_values} - set(self.event_types))
        if unknown:
            raise ValueError(f"feature set: value meanings for unknown event types {unknown}")
        unfitted = sorted({t for t, _ in self.btyd} - set(self.event_types))
        if unfitted:
            raise ValueError(f"feature set: BG/NBD parameters for unknown event types {unfitted}")
        if self.btyd and self.btyd_horizon_days <= 0:
            raise ValueError("feature set: BG/NBD parameters need the horizon their expected days look ahead")
        # one order whatever the caller's, so a set equals itself after a JSON round trip
        object.__setattr__(self, "event_values", tuple(sorted(self.event_values, key=lambda p: p[0])))
        object.__setattr__(self, "btyd", tuple(sorted(self.btyd, key=lambda p: p[0])))

    def value(self, event_type: str) -> EventValue:
        """What ``event_type``'s value means (``none`` when it carries none)."""
        return dict(self.event_values).get(event_type, EventValue("none"))

    @property
    def valued_types(self) -> tuple[str, ...]:
        """Event types whose value is used."""
        return tuple(t for t in self.event_types if self.value(t).meaning != "none")

    def families(self, event_type: str) -> list[Family]:
        """The event families of one type under this set's definitions (fitted ones where fitted)."""
        found = [f for f in event_families(self.value(event_type).meaning) if f.since <= self.definition]
        if event_type in dict(self.btyd):
            found += fitted_families()
        return found

    def computes(self, key: str, event_type: str) -> bool:
        """Whether a family's column for this type is part of the set (older definitions lack newer ones)."""
        f = family(key)
        return f.since <= self.definition and (not f.fitted or event_type in dict(self.btyd))

    def event_columns(self, event_type: str) -> list[str]:
        s = slug(event_type)
        return [c for f in self.families(event_type) for c in f.columns(s=s)]

    def with_btyd(self, fitted: dict[str, BgNbd], horizon_days: int) -> FeatureSet:
        """The same set with BG/NBD features for the fitted types."""
        return replace(self, btyd=tuple(fitted.items()), btyd_horizon_days=horizon_days)

    @property
    def account_columns(self) -> list[str]:
        return [f.pattern for f in ACCOUNT_FAMILIES if not f.categorical]

    @property
    def categorical_columns(self) -> list[str]:
        if self.is_snapshot:
            return [c for c in self.table_categorical if c not in self.dropped]
        cols = [*CATEGORICAL, *(f"attr_{slug(a)}" for a in self.categorical_attributes)]
        return [c for c in cols if c not in self.dropped]

    def without(self, columns: tuple[str, ...] | list[str]) -> FeatureSet:
        """The same set with ``columns`` left out of the model."""
        return replace(self, dropped=tuple(sorted({*self.dropped, *columns})))

    @property
    def numeric_attribute_columns(self) -> list[str]:
        return [f"attr_{slug(a)}" for a in self.attributes if a not in self.categorical_attributes]

    @property
    def columns(self) -> list[str]:
        """Every feature column, in model order."""
        if self.is_snapshot:
            return [c for c in self.table_numeric if c not in self.dropped] + self.categorical_columns
        cols = [c for t in self.event_types for c in self.event_columns(t)]
        cols += self.account_columns + self.numeric_attribute_columns
        return [c for c in cols if c not in self.dropped] + self.categorical_columns

    def to_json(self) -> str:
        data = asdict(self)
        data["event_values"] = {t: asdict(v) for t, v in self.event_values}
        data["btyd"] = {t: m.to_dict() for t, m in self.btyd}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSet:
        data = json.loads(text)
        data.setdefault("definition", 1)  # saved before definitions were numbered
        snapshot = bool(data.get("table_numeric") or data.get("table_categorical"))
        if data["definition"] < COMPUTABLE_FROM and not snapshot:
            raise IncomputableDefinitions(
                f"feature definitions {data['definition']}, whose columns this churnml ({FEATURE_DEFINITION}) no "
                f"longer computes ({'; '.join(_changes_since(data['definition']))}): retrain it"
            )
        for key in ("windows", "valued_types", "extra"):  # fields of earlier releases, fixed or unused
            data.pop(key, None)
        for key in (
            "event_types",
            "attributes",
            "categorical_attributes",
            "table_numeric",
            "table_categorical",
            "dropped",
        ):
            data[key] = tuple(data.get(key, ()))
        data["event_values"] = tuple(
            (t, _event_value(v)) for t, v in sorted(dict(data.get("event_values") or {}).items())
        )
        data["btyd"] = tuple((t, BgNbd(**m)) for t, m in sorted(dict(data.get("btyd") or {}).items()))
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"feature set has fields this churnml does not know: {unknown} (saved by a newer one?)"
            )
        return cls(**data)

    def definition_changes(self) -> list[str]:
        """What changed in the meaning of this set's columns since the definitions it was built with."""
        if self.is_snapshot:  # a ready table's columns mean what the table says
            return []
        return [
            change.description
            for number, change in DEFINITION_CHANGES.items()
            if number > self.definition and any(c.endswith(change.column_endings) for c in self.columns)
        ]


def _changes_since(definition: int) -> list[str]:
    return [c.description for n, c in DEFINITION_CHANGES.items() if n > definition]


def _event_value(data: dict) -> EventValue:
    scale = tuple(data["scale"]) if data.get("scale") is not None else None
    bands = tuple((str(n), float(lo), float(hi)) for n, lo, hi in data.get("bands", ()))
    return EventValue(**{**data, "scale": scale, "bands": bands})
