"""The feature catalogue: every column of a feature set resolved against the registry.

Each entry (`FeatureInfo`) is a family of `churnml.features.definitions` applied to one event type,
window or attribute: its description and unit in words, what a higher value means for risk, whether a
CSM can act on it, the reason it belongs to, and the event type's vocabulary (names, what the value
means). The model saves the catalogue, so sentences are rendered from it alone, wherever it is served.
Event types are named by the spec's ``event_labels``, the built-in vocabulary (``churnml.schema``), or
a neutral default, so a new type is described without code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pandas as pd

from churnml.features.definitions import FAMILIES, Family, column_name, family, slug
from churnml.features.sets import FeatureSet
from churnml.schema import EVENT_TYPES, EventValue, EventVocabulary
from churnml.spec import EventLabel

__all__ = ["FeatureInfo", "build_catalogue", "catalogue_frame", "vocabulary_for"]

_FLIP = {"safer": "riskier", "riskier": "safer", "either": "either"}


@dataclass(frozen=True)
class FeatureInfo:
    """One column as a CSM-facing fact (see `churnml.features.definitions.Family`)."""

    name: str
    family: str
    description: str
    unit: str
    label: str  # short noun phrase: "logins in the last 30 days"
    group: str  # reason group: usage | support | billing | feedback | onboarding | account | context | table
    signal: str  # the reason it belongs to: its group (usage, billing...), or its own name (context)
    higher: str  # riskier | safer | either
    missing_is: str  # low | high | unknown
    actionable: bool
    context: bool
    signed: bool
    categorical: bool = False
    event_type: str | None = None
    window: int | None = None
    vocabulary: EventVocabulary | None = None

    # the event type's words, for sentences
    @property
    def plural(self) -> str:
        return self.vocabulary.plural if self.vocabulary else self.label

    @property
    def singular(self) -> str:
        return self.vocabulary.singular if self.vocabulary else self.label

    @property
    def value_label(self) -> str:
        return self.vocabulary.value if self.vocabulary else ""

    @property
    def meaning(self) -> str:
        v = self.vocabulary.values if self.vocabulary else None
        return v.meaning if v else "none"

    @property
    def scale(self) -> tuple[float, float] | None:
        v = self.vocabulary.values if self.vocabulary else None
        return v.scale if v else None

    def band(self, score: float) -> str | None:
        v = self.vocabulary.values if self.vocabulary else None
        return v.band(score) if v else None

    @property
    def unit_word(self) -> str:
        v = self.vocabulary.values if self.vocabulary else None
        return (v.unit if v else "") or self.value_label

    @property
    def up(self) -> str:
        v = self.vocabulary.values if self.vocabulary else None
        return v.up if v else "added"

    @property
    def down(self) -> str:
        v = self.vocabulary.values if self.vocabulary else None
        return v.down if v else "removed"

    @property
    def distinct(self) -> str:
        return self.vocabulary.distinct_phrase if self.vocabulary else self.label

    def sibling(self, key: str, window: int | None = None) -> str:
        """The column of family ``key`` for this column's event type."""
        return column_name(key, slug(self.event_type or ""), window)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureInfo:
        data = dict(data)
        vocab = data.get("vocabulary")
        if vocab is not None:
            values = vocab.get("values")
            if values is not None:
                values = EventValue(**{**values, "scale": tuple(values["scale"]) if values.get("scale") else None,
                                       "bands": tuple(tuple(b) for b in values.get("bands", ()))})  # fmt: skip
            data["vocabulary"] = EventVocabulary(**{**vocab, "values": values})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"feature catalogue entry {data.get('name')!r} has unknown fields {unknown}")
        return cls(**data)


def vocabulary_for(
    event_type: str, labels: dict[str, EventLabel] | None = None, values: EventValue | None = None
) -> EventVocabulary:
    """How to name an event type: the spec's label over the built-in vocabulary over a neutral default;
    ``values`` (the feature set's, resolved from spec, vocabulary and data) says what its value means."""
    name = event_type.replace("_", " ")
    base = EVENT_TYPES.get(event_type) or EventVocabulary(
        f"'{event_type}' events.", f"{name} events", f"{name} event"
    )
    given = {
        k: v
        for k, v in (labels or {}).get(event_type, EventLabel()).model_dump().items()
        if v not in (None, "")
    }
    merged = {**asdict(base), **given, "values": values if values is not None else base.values}
    return EventVocabulary(**merged)


def _higher(f: Family, vocab: EventVocabulary | None) -> str:
    if f.higher == "as_type":
        return vocab.more_is if vocab else "either"
    if f.higher == "against_type":
        return _FLIP[vocab.more_is] if vocab else "either"
    if f.higher == "up_is":
        return vocab.values.up_is if vocab and vocab.values else "either"
    return f.higher


def _words(f: Family, vocab: EventVocabulary | None, w: int | None, a: str) -> dict[str, str]:
    if vocab is None:
        return {"a": a, "w": str(w)}
    unit = (vocab.values.unit if vocab.values else "") or vocab.value
    return {"plural": vocab.plural, "Plural": vocab.plural[:1].upper() + vocab.plural[1:], "singular": vocab.singular,
            "value": vocab.value, "Value": vocab.value[:1].upper() + vocab.value[1:], "unit": unit,
            "distinct": vocab.distinct_phrase, "w": str(w), "a": a}  # fmt: skip


def _entry(f: Family, name: str, vocab: EventVocabulary | None, event_type: str | None = None,
           w: int | None = None, a: str = "") -> FeatureInfo:  # fmt: skip
    words = _words(f, vocab, w, a)
    unit = f.unit.format(value=words.get("value", "value"), unit=words.get("unit", "value"))
    label = f.label.format(**words) if vocab else f.label.format(**words).replace("_", " ")
    group = f.group or (vocab.group if vocab else "usage")
    return FeatureInfo(
        name=name, family=f.key, description=f.description.format(**words), unit=unit, label=label,
        group=group, signal=name if f.context or f.scope == "table" else group,
        higher=_higher(f, vocab), missing_is=f.missing_is,
        actionable=f.actionable if f.actionable is not None else bool(vocab and vocab.actionable),
        context=f.context, signed=f.signed, categorical=f.categorical, event_type=event_type, window=w, vocabulary=vocab,
    )  # fmt: skip


def _event_entries(fs: FeatureSet, event_type: str, vocab: EventVocabulary) -> list[FeatureInfo]:
    s = slug(event_type)
    entries = []
    for f in fs.families(event_type):
        # a fitted family's window is the horizon it looks ahead ("expected in the next 60 days")
        for w in f.windows or ((fs.btyd_horizon_days,) if f.fitted else (None,)):
            entries.append(_entry(f, f.pattern.format(s=s, w=w), vocab, event_type, w))
    return entries


def build_catalogue(fs: FeatureSet, event_labels: dict[str, EventLabel] | None = None) -> list[FeatureInfo]:
    """One entry per feature column of ``fs``, in column order."""
    if fs.is_snapshot:  # a ready-made table: all we know is the column's name and kind
        return [
            _entry(family("table_category" if c in fs.table_categorical else "table_number"), c, None, a=c)
            for c in fs.columns
        ]
    by_name: dict[str, FeatureInfo] = {}
    for t in fs.event_types:
        for item in _event_entries(fs, t, vocabulary_for(t, event_labels, fs.value(t))):
            by_name[item.name] = item
    for f in FAMILIES:
        if f.scope == "account":
            by_name[f.pattern] = _entry(f, f.pattern, None)
    for attr in fs.attributes:
        f = family("attribute_category" if attr in fs.categorical_attributes else "attribute")
        by_name[f"attr_{slug(attr)}"] = _entry(f, f"attr_{slug(attr)}", None, a=attr)
    missing = [c for c in fs.columns if c not in by_name]
    if missing:  # every column must be explainable; a gap is a bug, not a silent omission
        raise ValueError(f"feature catalogue: no description for {missing}")
    return [by_name[c] for c in fs.columns]


def catalogue_frame(catalogue: list[FeatureInfo]) -> pd.DataFrame:
    """The catalogue as a table (one row per column) for people: CSV beside features, an MLflow artifact."""
    rows = [
        {"name": i.name, "family": i.family, "description": i.description, "unit": i.unit, "label": i.label,
         "group": i.group, "signal": i.signal, "higher_is": i.higher, "actionable": i.actionable, "context": i.context,
         "event_type": i.event_type, "value_meaning": i.meaning if i.event_type else None}
        for i in catalogue
    ]  # fmt: skip
    return pd.DataFrame(rows)
