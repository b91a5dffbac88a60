"""Reasons a CSM can repeat on a call: SHAP per signal, stated as facts, checked against accounts that stayed.

Contributions come from LightGBM's ``pred_contrib`` (exact TreeSHAP, in log-odds of the uncalibrated
booster), one per column. Columns that say the same thing (logins over 7, 30 and 90 days, their trend,
the days since the last one) form one *signal* (`churnml.features.definitions.Family.signal`), whose
contribution is the sum of theirs (SHAP values add up), so one fact is not listed three times.

Each signal is stated by one of its columns, in that column family's sentence: the one that drives it
most and that is unusual for an account that stayed (`churnml.explain.compare`). An account's reasons
come in three kinds:

- **problems**: risk-raising signals a CSM can act on, each with the play whose conditions its values
  meet (`churnml.explain.playbook`); a signal whose values are normal for retained accounts is not one;
- **protective** factors: signals that lower the risk, shown instead of problems when no action is needed;
- **context**: what a CSM cannot change (plan, segment, industry, tenure, MRR): never a play.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from churnml.explain.compare import Comparison, compare
from churnml.explain.playbook import DEFAULT_PLAYBOOK, Playbook
from churnml.features.catalogue import FeatureInfo
from churnml.features.definitions import family, slug
from churnml.features.reference import FeatureReference
from churnml.features.sentences import Fact, Reading

__all__ = ["AccountReasons", "Explainer", "Reason", "describe_feature", "strength"]

NO_ACTION = "No action needed"
# Reasons shown per kind (problems, protective, context): the pages, batch scoring and the API's default,
# so /explain says what the account page says.
REASONS_SHOWN = 5


@dataclass(frozen=True)
class Reason:
    """One reason as a CSM reads it, and the numbers behind it."""

    signal: str  # the reason's key: its group (usage, billing...), or a context column
    feature: str  # the column whose fact is stated
    label: str
    sentence: str
    value: float | str | None
    values: dict[str, float | str | None]  # every number (and date) the sentence quotes
    contribution: float  # the signal's SHAP value, log-odds; > 0 raises churn risk
    direction: str  # "raises risk" | "lowers risk"
    strength: str  # "strong" | "moderate" | "slight"
    kind: str  # "problem" | "protective" | "context"
    group: str
    actionable: bool
    comparison: str | None = None  # "lower than 88% of accounts that stayed (median 40)"
    percentile: float | None = None  # share of retained accounts below the value, 0-100
    play: str | None = None
    play_action: str | None = None
    play_condition: str | None = None
    play_facts: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class AccountReasons:
    """An account's problems (with plays), protective factors and context."""

    problems: list[Reason]
    protective: list[Reason]
    context: list[Reason]
    action_needed: bool

    @property
    def headline(self) -> str:
        """What the risk list says of the account: its first problem, or that none needs action."""
        if not self.action_needed or not self.problems:
            return NO_ACTION
        return self.problems[0].sentence

    @property
    def shown(self) -> list[Reason]:
        """What the account page leads with: problems when action is needed, else protective factors."""
        return self.problems if self.action_needed else self.protective

    def to_json(self) -> str:
        """As JSON (how reasons computed on a Spark executor travel back); `from_json` reads it back equal."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AccountReasons:
        data = json.loads(text)
        kinds = {k: [Reason(**r) for r in data[k]] for k in ("problems", "protective", "context")}
        return cls(**kinds, action_needed=bool(data["action_needed"]))


def strength(contribution: float) -> str:
    a = abs(contribution)
    return "strong" if a >= 0.5 else "moderate" if a >= 0.15 else "slight"


def describe_feature(
    info: FeatureInfo, row: dict[str, object], as_of: pd.Timestamp | None = None
) -> Fact | None:
    """The sentence stating ``info``'s value in ``row`` (None: nothing a CSM could repeat, e.g. unknown)."""
    return family(info.family).sentence(info, Reading(row, as_of))


def _plain(value: object) -> float | str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return None if f != f else f


class Explainer:
    """Turns SHAP contributions into an account's reasons; built once per model."""

    def __init__(
        self, catalogue: list[FeatureInfo], reference: FeatureReference | None = None,
        playbook: Playbook = DEFAULT_PLAYBOOK,
    ) -> None:  # fmt: skip
        self.catalogue = catalogue
        self.by_name = {i.name: i for i in catalogue}
        self.reference = reference
        self.playbook = playbook
        signals: dict[str, list[int]] = {}
        for j, info in enumerate(catalogue):
            signals.setdefault(info.signal or info.name, []).append(j)
        self.signals = list(signals)
        self.members = [np.array(signals[s]) for s in self.signals]
        self.is_context = np.array([catalogue[m[0]].context for m in self.members])
        self.membership = np.zeros((len(catalogue), len(self.signals)))
        for g, members in enumerate(self.members):
            self.membership[members, g] = 1.0

    def unread_conditions(self) -> list[str]:
        """The playbook's conditions on columns this model does not have (see `Playbook.unread_conditions`)."""
        slugs = sorted({slug(i.event_type) for i in self.catalogue if i.event_type})
        return self.playbook.unread_conditions(self.by_name, slugs)

    def explain(
        self, features: pd.DataFrame, contributions: np.ndarray, action_needed: Sequence[bool], k: int = REASONS_SHOWN,
        as_of: Sequence[pd.Timestamp | None] | None = None,
    ) -> list[AccountReasons]:  # fmt: skip
        """Every row's reasons (contributions in catalogue column order)."""
        names = [i.name for i in self.catalogue]
        contributions = np.asarray(contributions, float)
        sums = contributions @ self.membership
        records = features[names].to_numpy(dtype=object)
        if as_of is None:
            as_of = (
                list(features["observation_date"])
                if "observation_date" in features
                else [None] * len(features)
            )
        return [
            self._account(
                dict(zip(names, records[i], strict=True)),
                contributions[i],
                sums[i],
                bool(action_needed[i]),
                k,
                as_of[i],
            )  # fmt: skip
            for i in range(len(features))
        ]

    def _account(
        self, row: dict[str, object], contrib: np.ndarray, sums: np.ndarray, action_needed: bool, k: int,
        as_of: pd.Timestamp | None,
    ) -> AccountReasons:  # fmt: skip
        reading = Reading(row, None if as_of is None else pd.Timestamp(as_of))
        problems, protective, context = [], [], []
        for g in np.argsort(-sums, kind="stable"):
            if sums[g] <= 0 or len(problems) >= k:
                break
            if not self.is_context[g]:
                found = self._stated(g, contrib, reading, sums[g], "problem")
                if found:
                    problems.append(self._with_play(found, row) if action_needed else found)
        for g in np.argsort(sums, kind="stable"):
            if sums[g] >= 0 or len(protective) >= k:
                break
            if not self.is_context[g]:
                found = self._stated(g, contrib, reading, sums[g], "protective")
                if found:
                    protective.append(found)
        for g in np.argsort(-np.abs(sums), kind="stable"):
            if sums[g] == 0 or len(context) >= k:
                break
            if self.is_context[g]:
                found = self._stated(g, contrib, reading, sums[g], "context")
                if found:
                    context.append(found)
        return AccountReasons(problems, protective, context, action_needed)

    def _stated(
        self, g: int, contrib: np.ndarray, reading: Reading, total: float, kind: str
    ) -> Reason | None:
        """The signal stated by its column that drives it most and fits its kind: a problem's value is
        unusual on the risky side for an account that stayed, a protective value is not."""
        members = self.members[g]
        order = members[np.argsort(-contrib[members] if total > 0 else contrib[members], kind="stable")]
        for j in order:
            if kind != "context" and (contrib[j] <= 0 if total > 0 else contrib[j] >= 0):
                break
            info = self.catalogue[j]
            fact = family(info.family).sentence(info, reading)
            if fact is None or (kind == "problem" and fact.reassuring):
                continue
            ref = self.reference.get(info.name) if self.reference else None
            comparison = compare(info, ref, reading.raw(info.name))
            if not self._fits(kind, comparison):
                continue
            return self._reason(info, fact, comparison, reading, total, kind)
        return None

    def _fits(self, kind: str, comparison: Comparison | None) -> bool:
        """A problem's value is riskier than three in four accounts that stayed; a protective one at
        least as safe as the typical one (a value whose direction is unknown is neither)."""
        if kind == "context" or self.reference is None:
            return True
        if comparison is None or comparison.risk_share is None:
            return False
        return comparison.unusual_risk if kind == "problem" else comparison.risk_share <= 0.5

    def _reason(
        self,
        info: FeatureInfo,
        fact: Fact,
        comparison: Comparison | None,
        reading: Reading,
        total: float,
        kind: str,
    ) -> Reason:
        return Reason(
            signal=info.signal or info.name, feature=info.name, label=info.label, sentence=fact.text,
            value=_plain(reading.raw(info.name)), values=dict(fact.values), contribution=float(total),
            direction="raises risk" if total > 0 else "lowers risk", strength=strength(total), kind=kind,
            group=info.group, actionable=info.actionable and not info.context,
            comparison=comparison.text if comparison else None,
            percentile=comparison.percentile if comparison else None,
        )  # fmt: skip

    def _with_play(self, reason: Reason, row: dict[str, object]) -> Reason:
        """The playbook's play for a problem, if one matches and its conditions hold for this account."""
        if not reason.actionable:
            return reason
        info = self.by_name[reason.feature]
        s = slug(info.event_type) if info.event_type else ""
        play = self.playbook.play_for(row, feature=reason.feature, group=reason.group, event_type=info.event_type,
                                      signal=reason.signal, slug=s)  # fmt: skip
        if play is None:
            return reason
        return Reason(**{**reason.__dict__, "play": play.name, "play_action": play.action,
                         "play_condition": play.condition_text, "play_facts": play.facts(row, s)})  # fmt: skip
