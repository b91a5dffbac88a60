"""THE feature registry: every feature family declared once.

A family is one kind of column: how its name is built, what it is computed from, its unit and
description, the sentence a CSM reads about it (and the numbers that sentence quotes), what a higher
value means for risk, whether a CSM can act on it, and which reason it belongs to. Columns (`sets`),
the catalogue (`catalogue`), the sentences and comparisons of reasons (`churnml.explain`), the API's
input checks and the pages all derive from these declarations; nothing parses a column name to learn
what it means. A new family is one `Family` below plus its computation in `engine`; a test fails when
either exists without the other.

Event families are generated per event type (``{s}`` is the type's column-safe name) and, for values,
per value meaning (`churnml.schema.EventValue`): identifiers are counted as distinct values, never
summed; scores keep their latest value, its date, mean and lowest; quantities are net sums.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from churnml.features import statements as say
from churnml.features.sentences import Fact, Reading
from churnml.features.windows import LOOKBACK, TREND, VALUE_WINDOWS, WINDOWS

if TYPE_CHECKING:  # the catalogue's entries are what sentences read; it imports this module
    from churnml.features.catalogue import FeatureInfo

__all__ = [
    "WINDOWS",
    "VALUE_WINDOWS",
    "TREND",
    "LOOKBACK",
    "RENEWAL",
    "Family",
    "FAMILIES",
    "family",
    "event_families",
    "fitted_families",
    "column_name",
    "slug",
]

RENEWAL = "days_to_renewal"

Sentence = Callable[["FeatureInfo", Reading], Fact | None]


def slug(name: str) -> str:
    """A column-safe form of an event type or attribute name."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "x"


@dataclass(frozen=True)
class Family:
    """One kind of feature column.

    ``higher``: what a higher value means for churn risk: ``riskier``, ``safer``, ``either``, or, for
    event families, relative to the event type's ``more_is`` (``as_type``: more events, riskier if the
    type is; ``against_type``: the opposite, e.g. days since the last one) or to a quantity's ``up_is``.
    ``missing_is``: where a missing value sits on that scale (``low``: none at all, ``high``: never,
    e.g. days since a first login that never came; ``unknown``: no comparison is possible).
    ``group``: the reason the column belongs to (None: its event type's group). Every column of a
    group is one reason, whose SHAP value is the sum of theirs: logins, feature use and active users
    are one usage reason, not three near-duplicates, and each reason gets at most one play. Context and
    a ready table's columns are reasons of their own.
    """

    key: str
    pattern: str  # column name; {s} = event type, {w} = window, {a} = attribute
    scope: str  # event | account | attribute | table
    unit: str
    description: str
    label: str
    sentence: Sentence
    higher: str = "either"
    missing_is: str = "unknown"
    group: str | None = None  # reason group; None: the event type's (vocabulary)
    context: bool = False  # a fact a CSM cannot change (tenure, plan, industry): never a play
    actionable: bool | None = None  # None: the event type's
    signed: bool = False  # may be negative
    windows: tuple[int, ...] = ()
    meanings: tuple[str, ...] = ()  # event families: the value meanings it is built for (() = every type)
    categorical: bool = False
    # what "what changed since the last score" quotes for it: another family of the same type (a
    # trend's 30-day count, an overdue ratio's days since), or itself
    tracked_by: tuple[str, int | None] | None = None
    # its distribution moves with the calendar by construction (tenure, totals since the account started):
    # drift monitoring reports it without raising an alarm
    grows_with_time: bool = False
    since: int = 1  # the feature definitions number that introduced it (older models do not have it)
    # computed from parameters fitted on the development rows, carried by the feature set
    # (`churnml.features.btyd`): only for the event types they were fitted for; {w} is the horizon
    fitted: bool = False

    def columns(self, s: str = "{s}", a: str = "{a}") -> list[str]:
        if self.windows:
            return [self.pattern.format(s=s, w=w, a=a) for w in self.windows]
        return [self.pattern.format(s=s, a=a)]


# ----------------------------------------------------------------------------------------- families

_ALL = ()
_AMOUNT, _SCORE, _QUANTITY = ("amount",), ("score",), ("quantity",)
_DISTINCT = ("identifier", "category")

FAMILIES: tuple[Family, ...] = (
    # every event type: how often, how lately, how regularly
    Family("count_window", "{s}_count_{w}d", "event", "count", "Number of {plural} in the last {w} days.",
           "{plural} in the last {w} days", say.window_count, "as_type", windows=WINDOWS),
    Family("count_trend_ratio", "{s}_count_trend_ratio", "event", "ratio",
           "{Plural} in the last 30 days relative to the 30 days before (1 = no change).",
           "change in {plural} over 30 days", say.trend, "as_type", tracked_by=("count_window", TREND)),
    Family("count_trend_delta", "{s}_count_trend_delta", "event", "count",
           "Change in {plural}: the last 30 days minus the 30 days before.",
           "change in {plural} over 30 days", say.trend, "as_type", signed=True, tracked_by=("count_window", TREND)),
    Family("active_days", "{s}_active_days_30d", "event", "days",
           "Days with at least one {singular} in the last 30 days.", "days with {plural} in the last 30 days",
           say.active_days, "as_type"),
    Family("days_since_last", "days_since_last_{s}", "event", "days",
           "Days since the last {singular} (empty if there never was one).", "days since the last {singular}",
           say.days_since, "against_type", missing_is="high"),
    Family("count_total", "{s}_count_total", "event", "count", "Number of {plural} since the account started.",
           "{plural} since the account started", say.count_total, "as_type", missing_is="low",
           grows_with_time=True),
    Family("active_days_total", "{s}_active_days_total", "event", "days",
           "Days with at least one {singular} since the account started.", "days with {plural} since the account started",
           say.active_days_total, "as_type", missing_is="low", since=4, grows_with_time=True),
    Family("days_since_first", "days_since_first_{s}", "event", "days",
           "Days since the first {singular} (empty if there never was one).", "days since the first {singular}",
           say.days_since_first, "either", group="context", context=True, actionable=False, since=4,
           grows_with_time=True),
    Family("mean_gap_days", "{s}_mean_gap_days", "event", "days",
           "Typical days between {plural} (first to last, per gap).", "typical days between {plural}",
           say.mean_gap),
    Family("overdue_ratio", "{s}_overdue_ratio", "event", "ratio",
           "Days since the last {singular} relative to the typical gap (above 1 = overdue).",
           "time since the last {singular} relative to usual", say.overdue, "against_type",
           tracked_by=("days_since_last", None)),
    # buy-till-you-die (BG/NBD) for the activity types of inactivity churn, from the three above
    Family("btyd_p_alive", "{s}_p_alive", "event", "probability",
           "Probability that {plural} continue, from how many days had one, when the first and the last were "
           "(BG/NBD, fitted on the training rows).", "chance {plural} continue", say.p_alive, "as_type",
           since=4, fitted=True, tracked_by=("days_since_last", None)),
    Family("btyd_expected", "{s}_expected_days_ahead", "event", "days",
           "Days with {plural} expected in the next {w} days at the customer's rhythm (BG/NBD, fitted on the "
           "training rows).", "days with {plural} expected in the next {w} days", say.expected_days, "as_type",
           since=4, fitted=True, tracked_by=("days_since_last", None)),
    # amounts: totals and averages
    Family("amount_sum", "{s}_amount_sum_{w}d", "event", "{value}", "Total {value} of {plural} in the last {w} days.",
           "{plural} in the last {w} days ({value})", say.amount_sum, "as_type", windows=VALUE_WINDOWS,
           meanings=_AMOUNT, signed=True),
    Family("amount_mean", "{s}_amount_mean_{w}d", "event", "{value}",
           "Average {value} of {plural} in the last {w} days.", "average {singular} in the last {w} days ({value})",
           say.amount_mean, "as_type", windows=VALUE_WINDOWS, meanings=_AMOUNT, signed=True),
    Family("amount_last", "{s}_amount_last", "event", "{value}", "{Value} of the latest {singular} that has one.",
           "latest {singular} ({value})", say.amount_last, "either", meanings=_AMOUNT, signed=True),
    Family("amount_sum_total", "{s}_amount_sum_total", "event", "{value}",
           "Total {value} of {plural} since the account started.", "{plural} since the account started ({value})",
           say.amount_total, "as_type", meanings=_AMOUNT, signed=True, grows_with_time=True),
    # scores: the latest and when, the mean, the lowest
    Family("score_last", "{s}_score_last", "event", "score", "The latest {value} given.", "latest {value}",
           say.score_last, "safer", meanings=_SCORE),
    Family("days_since_last_score", "days_since_last_{s}_score", "event", "days",
           "Days since the latest {value} was given.", "days since the latest {value}", say.score_age, "either",
           meanings=_SCORE),
    Family("score_mean", "{s}_score_mean_{w}d", "event", "score", "Average {value} in the last {w} days.",
           "average {value} in the last {w} days", say.score_mean, "safer", windows=VALUE_WINDOWS, meanings=_SCORE),
    Family("score_min", "{s}_score_min_90d", "event", "score", "Lowest {value} in the last 90 days.",
           "lowest {value} in the last 90 days", say.score_min, "safer", meanings=_SCORE),
    # quantities: net changes
    Family("net_change", "{s}_net_{w}d", "event", "{value}", "Net change in {value} in the last {w} days.",
           "net change in {value} in the last {w} days", say.net, "up_is", windows=VALUE_WINDOWS,
           meanings=_QUANTITY, signed=True),
    Family("net_change_total", "{s}_net_total", "event", "{value}", "Net change in {value} since the account started.",
           "net change in {value} since the account started", say.net, "up_is", meanings=_QUANTITY, signed=True, grows_with_time=True),
    Family("last_change", "{s}_last_change", "event", "{value}", "Change in {value} of the latest {singular}.",
           "latest change in {value}", say.last_change, "up_is", meanings=_QUANTITY, signed=True),
    # identifiers and categories: how many different ones
    Family("distinct", "{s}_distinct_{w}d", "event", "count", "Number of {distinct} in the last {w} days.",
           "{distinct} in the last {w} days", say.distinct, "as_type", windows=VALUE_WINDOWS, meanings=_DISTINCT),
    Family("distinct_total", "{s}_distinct_total", "event", "count", "Number of {distinct} since the account started.",
           "{distinct} since the account started", say.distinct, "as_type", meanings=_DISTINCT, grows_with_time=True),
    # the account as of the date
    Family("tenure_days", "tenure_days", "account", "days", "Days since the account started.", "account age",
           say.tenure, group="context", context=True, actionable=False, grows_with_time=True),
    Family("active_days_30d", "active_days_30d", "account", "days", "Days with any activity in the last 30 days.",
           "active days in the last 30 days", say.account_active_days, "safer",
           group="usage", actionable=True),
    Family("active_users_30d", "active_users_30d", "account", "users", "Distinct users active in the last 30 days.",
           "active users in the last 30 days", say.active_users, "safer", group="usage",
           actionable=True),
    Family("mrr", "mrr", "account", "currency/month", "Monthly recurring revenue at the date.", "MRR", say.mrr,
           group="context", context=True, actionable=False),
    Family("mrr_change_90d", "mrr_change_90d", "account", "currency/month",
           "Change in MRR over the last 90 days (negative = contraction).", "MRR change over 90 days", say.mrr_change,
           "safer", group="account", actionable=True, signed=True),
    Family("seats", "seats", "account", "seats", "Seats purchased at the date.", "seats purchased", say.seats,
           group="context", context=True, actionable=False),
    Family("seats_used_ratio", "seats_used_ratio", "account", "ratio",
           "Active users in the last 30 days per seat purchased (1 = every seat used).", "share of seats in use",
           say.seats_used, "safer", group="usage", actionable=True),
    Family(RENEWAL, RENEWAL, "account", "days", "Days until the next contract renewal.", "days to renewal",
           say.renewal, group="context", context=True, actionable=False),
    Family("plan", "plan", "account", "category", "Plan at the date.", "plan", say.labelled,
           group="context", context=True, actionable=False, categorical=True),
    Family("segment", "segment", "account", "category", "Customer segment.", "segment", say.labelled,
           group="context", context=True, actionable=False, categorical=True),
    # static customer attributes named in the spec, and the columns of a ready feature table
    Family("attribute", "attr_{a}", "attribute", "value", "Customer attribute '{a}'.", "{a}", say.labelled,
           group="context", context=True, actionable=False),
    Family("attribute_category", "attr_{a}", "attribute", "category", "Customer attribute '{a}'.", "{a}", say.labelled,
           group="context", context=True, actionable=False, categorical=True),
    Family("table_number", "{a}", "table", "value", "Column '{a}' of the input table.", "{a}", say.labelled,
           group="table", actionable=False, signed=True),
    Family("table_category", "{a}", "table", "category", "Column '{a}' of the input table.", "{a}", say.labelled,
           group="table", actionable=False, categorical=True),
)  # fmt: skip

_BY_KEY = {f.key: f for f in FAMILIES}
if len(_BY_KEY) != len(FAMILIES):  # pragma: no cover - a declaration error, caught at import
    raise RuntimeError("feature families: duplicate keys")
ACCOUNT_FAMILIES = tuple(f for f in FAMILIES if f.scope == "account")


def family(key: str) -> Family:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no feature family {key!r}; known: {', '.join(_BY_KEY)}") from None


def event_families(meaning: str) -> list[Family]:
    """The families built for an event type whose value means ``meaning``, in column order (the fitted
    ones, `fitted_families`, only where the feature set carries their parameters)."""
    return [
        f
        for f in FAMILIES
        if f.scope == "event" and not f.fitted and (not f.meanings or meaning in f.meanings)
    ]


def fitted_families() -> list[Family]:
    """The families computed from fitted parameters (BG/NBD), in column order."""
    return [f for f in FAMILIES if f.fitted]


def column_name(key: str, event_type_slug: str = "", window: int | None = None) -> str:
    """The column of family ``key`` for an event type (its column-safe name) and window."""
    f = family(key)
    if f.windows and window not in f.windows:
        raise KeyError(f"feature family {key!r} has windows {list(f.windows)}, not {window}")
    return f.pattern.format(s=event_type_slug, w=window, a="")
