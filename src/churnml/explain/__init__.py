"""Explanations for CSMs: reasons per account (`reasons`), compared with accounts that stayed
(`compare`), with the play whose conditions fit (`playbook`), and the lint that checks them (`lint`)."""

from churnml.explain.playbook import DEFAULT_PLAYBOOK, Play, Playbook, load_playbook
from churnml.explain.reasons import (
    NO_ACTION,
    REASONS_SHOWN,
    AccountReasons,
    Explainer,
    Reason,
    describe_feature,
)
from churnml.features.sentences import format_number

__all__ = [
    "DEFAULT_PLAYBOOK",
    "NO_ACTION",
    "REASONS_SHOWN",
    "AccountReasons",
    "Explainer",
    "Play",
    "Playbook",
    "Reason",
    "describe_feature",
    "format_number",
    "load_playbook",
]
