"""The feature catalogue: what every feature means, for CSMs and for explanations.

Each feature has a name, a plain-language description, a unit, and whether a CSM can act on it
(usage, onboarding, support and billing are actionable; tenure, segment or plan are context).
Descriptions of per-event-type features come from the event vocabulary (``churnml.schema``) or the
spec's ``event_labels``, so a new event type is described without code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from churnml.features import LOOKBACK, TREND, FeatureSet, slug
from churnml.schema import EVENT_TYPES, EventVocabulary
from churnml.spec import EventLabel

__all__ = ["FeatureInfo", "build_catalogue", "catalogue_frame", "vocabulary_for"]


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    description: str
    unit: str  # count | days | ratio | currency/month | seats | score | category | flag | <value label>
    actionable: bool
    group: str  # usage | support | billing | feedback | onboarding | account | profile
    event_type: str | None = None
    label: str = ""  # short noun phrase for sentences: "logins in the last 30 days"
    plural: str = ""  # of the event type, for sentences: "logins"
    singular: str = ""  # "login"
    value_label: str = ""  # what the event value means: "CSAT score"


_GROUPS = {
    "login": "usage", "feature_use": "usage", "support_ticket": "support", "nps_response": "feedback",
    "payment_succeeded": "billing", "payment_failed": "billing", "seat_change": "account",
    "plan_change": "account", "onboarding_step": "onboarding", "onboarding_completed": "onboarding",
    "purchase": "usage", "coupon_redemption": "usage",
}  # fmt: skip


def vocabulary_for(event_type: str, labels: dict[str, EventLabel] | None = None) -> EventVocabulary:
    """How to name an event type: the spec's label, the built-in vocabulary, or a neutral default."""
    if labels and event_type in labels:
        lab = labels[event_type]
        return EventVocabulary(
            lab.description or f"'{event_type}' events.", lab.plural, lab.singular, lab.value, lab.actionable
        )
    if event_type in EVENT_TYPES:
        return EVENT_TYPES[event_type]
    name = event_type.replace("_", " ")
    return EventVocabulary(f"'{event_type}' events.", f"{name} events", f"{name} event")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _event_features(fs: FeatureSet, event_type: str, vocab: EventVocabulary) -> list[FeatureInfo]:
    s = slug(event_type)
    group = _GROUPS.get(event_type, "usage")
    act = vocab.actionable

    def info(name: str, description: str, unit: str, label: str) -> FeatureInfo:
        return FeatureInfo(
            name, description, unit, act, group, event_type, label, vocab.plural, vocab.singular, vocab.value
        )

    items = [
        info(f"{s}_count_{w}d", f"Number of {vocab.plural} in the last {w} days.", "count",
             f"{vocab.plural} in the last {w} days")
        for w in fs.windows
    ]  # fmt: skip
    items += [
        info(f"{s}_count_trend_ratio",
             f"{_cap(vocab.plural)} in the last {TREND} days relative to the {TREND} days before (1 = no change).",
             "ratio", f"{vocab.plural} over the last {TREND} days"),
        info(f"{s}_count_trend_delta",
             f"Change in {vocab.plural}: the last {TREND} days minus the {TREND} days before.",
             "count", f"change in {vocab.plural} over the last {TREND} days"),
        info(f"{s}_active_days_{TREND}d", f"Days with at least one {vocab.singular} in the last {TREND} days.",
             "days", f"days with {vocab.plural} in the last {TREND} days"),
        info(f"days_since_last_{s}", f"Days since the last {vocab.singular} (empty if there never was one).",
             "days", f"days since the last {vocab.singular}"),
        info(f"{s}_count_total", f"Number of {vocab.plural} since the account started.", "count",
             f"{vocab.plural} in total"),
        info(f"{s}_mean_gap_days", f"Typical days between {vocab.plural} (first to last, per gap).", "days",
             f"typical days between {vocab.plural}"),
        info(f"{s}_overdue_ratio",
             f"Days since the last {vocab.singular} relative to the typical gap (above 1 = overdue).", "ratio",
             f"time since the last {vocab.singular} relative to usual"),
    ]  # fmt: skip
    if event_type in fs.valued_types:
        v = vocab.value
        items += [
            info(f"{s}_value_sum_{TREND}d", f"Total {v} of {vocab.plural} in the last {TREND} days.", v,
                 f"total {v} of {vocab.plural} in the last {TREND} days"),
            info(f"{s}_value_sum_{LOOKBACK}d", f"Total {v} of {vocab.plural} in the last {LOOKBACK} days.", v,
                 f"total {v} of {vocab.plural} in the last {LOOKBACK} days"),
            info(f"{s}_value_mean_{TREND}d", f"Average {v} of {vocab.plural} in the last {TREND} days.", v,
                 f"average {v} of {vocab.plural} in the last {TREND} days"),
            info(f"{s}_value_mean_{LOOKBACK}d", f"Average {v} of {vocab.plural} in the last {LOOKBACK} days.", v,
                 f"average {v} of {vocab.plural} in the last {LOOKBACK} days"),
            info(f"{s}_last_value", f"{_cap(v)} of the most recent {vocab.singular} that has one.", v,
                 f"latest {v} of {vocab.plural}"),
            info(f"{s}_value_sum_total", f"Total {v} of {vocab.plural} since the account started.", v,
                 f"total {v} of {vocab.plural}"),
        ]  # fmt: skip
    return items


_ACCOUNT = {
    "tenure_days": ("Days since the account started.", "days", False, "account", "account age"),
    "active_days_30d": ("Days with any activity in the last 30 days.", "days", True, "usage", "active days in the last 30 days"),
    "active_users_30d": ("Distinct users active in the last 30 days.", "users", True, "usage", "active users in the last 30 days"),
    "mrr": ("Monthly recurring revenue at the date.", "currency/month", False, "account", "MRR"),
    "mrr_change_90d": ("Change in MRR over the last 90 days (negative = contraction).", "currency/month", True, "account", "MRR change over 90 days"),
    "seats": ("Seats purchased at the date.", "seats", False, "account", "seats purchased"),
    "seats_used_ratio": ("Active users in the last 30 days per seat purchased (1 = every seat used).", "ratio", True, "usage", "share of seats in use"),
    "days_to_renewal": ("Days until the next contract renewal.", "days", False, "account", "days to renewal"),
    "nps_detractor": ("1 if the latest NPS answer was a detractor (0-6), 0 if not, empty if never answered.", "flag", True, "feedback", "detractor NPS"),
    "plan": ("Plan at the date.", "category", False, "profile", "plan"),
    "segment": ("Customer segment.", "category", False, "profile", "segment"),
}  # fmt: skip


def build_catalogue(fs: FeatureSet, event_labels: dict[str, EventLabel] | None = None) -> list[FeatureInfo]:
    """One entry per feature column of ``fs``, in column order."""
    if fs.is_snapshot:  # a ready-made table: all we know is the column's name and kind
        return [
            FeatureInfo(
                c,
                f"Column '{c}' of the input table.",
                "category" if c in fs.table_categorical else "value",
                False,
                "profile",
                None,
                c.replace("_", " "),
            )  # fmt: skip
            for c in fs.columns
        ]
    by_name: dict[str, FeatureInfo] = {}
    for t in fs.event_types:
        for item in _event_features(fs, t, vocabulary_for(t, event_labels)):
            by_name[item.name] = item
    for name, (desc, unit, act, group, label) in _ACCOUNT.items():
        by_name[name] = FeatureInfo(name, desc, unit, act, group, None, label)
    for attr in fs.attributes:
        name = f"attr_{slug(attr)}"
        unit = "category" if attr in fs.categorical_attributes else "value"
        by_name[name] = FeatureInfo(
            name, f"Customer attribute '{attr}'.", unit, False, "profile", None, attr.replace("_", " ")
        )
    missing = [c for c in fs.columns if c not in by_name]
    if missing:  # every column must be explainable; a gap is a bug, not a silent omission
        raise ValueError(f"feature catalogue: no description for {missing}")
    return [by_name[c] for c in fs.columns]


def catalogue_frame(catalogue: list[FeatureInfo]) -> pd.DataFrame:
    return pd.DataFrame([asdict(i) for i in catalogue])
