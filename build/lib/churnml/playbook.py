"""The retention playbook: which play a CSM runs for which reason.

Rules are matched in order against a risk-raising reason (feature name patterns, feature group or
event type); the first match gives the play. The defaults below cover the simulator's vocabulary;
a team replaces them with a YAML file (``CHURNML_PLAYBOOK`` or ``--playbook``) of the same shape::

    plays:
      - name: Onboarding session
        when: {groups: [onboarding]}
        action: Book a 30-minute onboarding session and finish the setup checklist together.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from churnml.explain import Reason

__all__ = ["Play", "Playbook", "load_playbook"]


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(default_factory=list, description="glob patterns on feature names")
    groups: list[str] = Field(default_factory=list)
    event_types: list[str] = Field(default_factory=list)

    def matches(self, reason: Reason, event_type: str | None) -> bool:
        return (
            any(fnmatch.fnmatchcase(reason.feature, p) for p in self.features)
            or reason.group in self.groups
            or (event_type is not None and event_type in self.event_types)
        )


class Play(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    action: str = Field(min_length=1)
    when: Match


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plays: list[Play] = Field(min_length=1)

    def play_for(self, reason: Reason, event_type: str | None = None) -> Play | None:
        """The play for a reason that raises risk and that a CSM can act on; None otherwise."""
        if reason.contribution <= 0 or not reason.actionable:
            return None
        return next((p for p in self.plays if p.when.matches(reason, event_type)), None)


DEFAULT_PLAYBOOK = Playbook(
    plays=[
        Play(name="Onboarding session", when=Match(groups=["onboarding"]),
             action="Book an onboarding session and finish the setup checklist with the admin."),
        Play(name="Billing fix", when=Match(groups=["billing"]),
             action="Contact the billing owner: update the card or payment method and clear failed invoices."),
        Play(name="Executive call", when=Match(groups=["feedback"], features=["nps_*"]),
             action="Set up a call between the sponsor and our leadership to hear and address the detractor feedback."),
        Play(name="Support escalation", when=Match(groups=["support"]),
             action="Review open tickets with support, escalate the worst, and follow up personally."),
        Play(name="Seat and plan review", when=Match(features=["seats*", "seat_change*", "mrr_change*"]),
             action="Review seat use and plan fit; offer a right-sized plan before the renewal."),
        Play(name="Training and check-in", when=Match(groups=["usage"]),
             action="Offer a training session on the features they stopped using and schedule a check-in."),
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
        raise ValueError(f"playbook {path}: {where}: {first['msg']}") from None
