"""The retention playbook: which play a CSM runs for which reason, and only when the facts fit.

A play matches a risk-raising reason by its group, event type, signal or feature, and then its
conditions must hold for that account's values: a billing fix needs failed payments, a detractor call
a recent detractor score, an onboarding session an onboarding not yet done. The first play that
matches and holds is the one shown; context (plan, industry, tenure) never gets a play, and neither
does an account that needs no action. A team replaces the defaults with a YAML file
(``CHURNML_PLAYBOOK``) of the same shape::

    plays:
      - name: Onboarding session
        when: {groups: [onboarding]}
        require: ["onboarding_completed_count_total is missing", "tenure_days <= 180"]
        action: Book a 30-minute onboarding session and finish the setup checklist together.

A condition is ``<column> <op> <number | true | false | column>`` (op: < <= > >= == !=) or
``<column> is missing|present``; ``{s}`` stands for the reason's event type (``{s}_count_30d == 0``).
A condition on a column the model does not have never holds: the default playbook names columns
that only some data sets have (NPS, tickets). For a team's own playbook that is most often a typo, so
`churnml score` and the service name each such condition (`Playbook.unread_conditions`).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from churnml.features.sentences import as_number

__all__ = ["DEFAULT_PLAYBOOK", "Condition", "Match", "Play", "Playbook", "condition", "load_playbook"]

_COMPARE = re.compile(
    r"^\s*(?P<left>[A-Za-z0-9_{}]+)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<right>[A-Za-z0-9_{}.+-]+)\s*$"
)
_STATE = re.compile(r"^\s*(?P<left>[A-Za-z0-9_{}]+)\s+is\s+(?P<state>missing|present)\s*$")
_OPS = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}  # fmt: skip


class Condition:
    """One parsed condition on an account's values."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        state, compare = _STATE.match(text), _COMPARE.match(text)
        if state:
            self.left, self.op, self.right = state["left"], state["state"], None
        elif compare:
            self.left, self.op, self.right = compare["left"], compare["op"], compare["right"]
        else:
            raise ValueError(
                f"condition {text!r}: expected '<column> <op> <number|column>' (op: < <= > >= == !=) "
                "or '<column> is missing|present'"
            )

    def _operand(self, token: str, row: Mapping[str, object], s: str) -> float | None:
        lowered = token.lower()
        if lowered in ("true", "false"):
            return 1.0 if lowered == "true" else 0.0
        try:
            return float(token)
        except ValueError:
            return as_number(row.get(token.replace("{s}", s)))

    def columns(self, s: str) -> list[str]:
        """The columns it reads, for a reason of event type slug ``s``."""
        names = [self.left] + ([self.right] if self.right and not _is_literal(self.right) else [])
        return [n.replace("{s}", s) for n in names]

    def holds(self, row: Mapping[str, object], s: str = "") -> bool:
        if "{s}" in self.text and not s:
            return False  # a condition on "this reason's event type" for a reason without one
        name = self.left.replace("{s}", s)
        if self.op in ("missing", "present"):
            if name not in row:
                return False
            return (as_number(row[name]) is None and not isinstance(row[name], str)) == (self.op == "missing")
        left, right = as_number(row.get(name)), self._operand(self.right or "", row, s)
        return left is not None and right is not None and bool(_OPS[self.op](left, right))


@functools.lru_cache(maxsize=1024)
def condition(text: str) -> Condition:
    """A parsed condition (parsed once per text)."""
    return Condition(text)


def _is_literal(token: str) -> bool:
    if token.lower() in ("true", "false"):
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


class Match(BaseModel):
    """Which reasons a play is for (any of the lists)."""

    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(default_factory=list, description="glob patterns on the reason's feature")
    groups: list[str] = Field(default_factory=list)
    event_types: list[str] = Field(default_factory=list)
    signals: list[str] = Field(default_factory=list)

    def matches(self, feature: str, group: str, event_type: str | None, signal: str) -> bool:
        return (
            any(fnmatch.fnmatchcase(feature, p) for p in self.features)
            or group in self.groups
            or (event_type is not None and event_type in self.event_types)
            or signal in self.signals
        )


class Play(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    action: str = Field(min_length=1)
    when: Match
    require: list[str] = Field(default_factory=list, description="conditions that must all hold")
    require_any: list[str] = Field(default_factory=list, description="conditions of which one must hold")

    @field_validator("require", "require_any")
    @classmethod
    def _parse(cls, conditions: list[str]) -> list[str]:
        for c in conditions:
            Condition(c)  # raises naming the condition
        return conditions

    def conditions_hold(self, row: Mapping[str, object], s: str = "") -> bool:
        every = all(condition(c).holds(row, s) for c in self.require)
        return every and (not self.require_any or any(condition(c).holds(row, s) for c in self.require_any))

    @property
    def condition_text(self) -> str:
        parts = [*self.require]
        if self.require_any:
            parts.append("(" + " or ".join(self.require_any) + ")")
        return " and ".join(parts)

    def facts(self, row: Mapping[str, object], s: str = "") -> dict[str, float | None]:
        """The values its conditions read, as they were for this account."""
        names = [n for c in (*self.require, *self.require_any) for n in condition(c).columns(s)]
        return {n: as_number(row.get(n)) for n in dict.fromkeys(names)}


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plays: list[Play] = Field(min_length=1)

    def play_for(
        self, row: Mapping[str, object], *, feature: str, group: str, event_type: str | None, signal: str,
        slug: str = "",
    ) -> Play | None:  # fmt: skip
        """The first play that matches this reason and whose conditions hold for this account."""
        for play in self.plays:
            if play.when.matches(feature, group, event_type, signal) and play.conditions_hold(row, slug):
                return play
        return None

    def unread_conditions(self, columns: Iterable[str], event_slugs: Iterable[str]) -> list[str]:
        """Each condition that reads a column the model does not have (for a ``{s}`` condition: for
        every one of the model's event types), named with its play: such a play is never shown."""
        known, slugs = set(columns), list(event_slugs)
        found = []
        for play in self.plays:
            for text in (*play.require, *play.require_any):
                parsed = condition(text)
                if "{s}" in text:  # readable if some event type gives every column it names
                    options = [set(parsed.columns(s)) - known for s in slugs] or [set(parsed.columns("{s}"))]
                    missing = min(options, key=len)
                else:
                    missing = set(parsed.columns("")) - known
                if missing:
                    found.append(f"play {play.name!r}: condition {text!r} reads {', '.join(sorted(missing))}, "
                                 "which the model does not have: the play is never shown")  # fmt: skip
        return found


DEFAULT_PLAYBOOK = Playbook(
    plays=[
        Play(name="Onboarding session", when=Match(groups=["onboarding"]),
             require=["onboarding_completed_count_total is missing", "tenure_days <= 180"],
             action="Book an onboarding session and finish the setup checklist with the admin."),
        Play(name="Billing fix", when=Match(groups=["billing"]), require=["payment_failed_count_90d > 0"],
             action="Contact the billing owner: update the card or payment method and clear failed invoices."),
        Play(name="Executive call", when=Match(groups=["feedback"]),
             require=["nps_response_score_last <= 6", "days_since_last_nps_response_score <= 180"],
             action="Set up a call between the sponsor and our leadership to hear and address the detractor feedback."),
        Play(name="Support escalation", when=Match(groups=["support"]),
             require_any=["support_ticket_score_min_90d <= 2", "support_ticket_count_30d >= 3"],
             action="Review open tickets with support, escalate the worst, and follow up personally."),
        Play(name="Seat and plan review", when=Match(groups=["account"]),
             require_any=["seat_change_net_90d < 0", "plan_change_net_90d < 0", "mrr_change_90d < 0"],
             action="Review seat use and plan fit; offer a right-sized plan before the renewal."),
        Play(name="Training and check-in", when=Match(groups=["usage"]),
             require_any=["{s}_count_trend_ratio < 0.8", "{s}_count_30d == 0", "{s}_overdue_ratio >= 2"],
             action="Offer a training session on the features they stopped using and schedule a check-in."),
        Play(name="Adoption review", when=Match(features=["seats_used_ratio", "active_users_30d"]),
             action="Review adoption with the admin: which teams and seats are inactive, and plan their rollout."),
        Play(name="Usage check-in", when=Match(groups=["usage"]),
             action="Ask how the team uses the product today, offer training on what they use least, and follow up."),
    ]
)  # fmt: skip


def load_playbook(path: Path | None) -> Playbook:
    """The playbook in ``path`` (YAML), or the default one."""
    if path is None:
        return DEFAULT_PLAYBOOK
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return Playbook.model_validate(raw)
    except OSError as err:
        raise ValueError(f"playbook {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"playbook {path}: not valid YAML ({err})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"playbook {path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None
