"""The account page's forms (log a play, assign, snooze): fields read and checked, errors naming them.

Plain HTML forms posted with the CSRF token the sign-in code provides (:func:`churnml.service.signin.
form_allowed`); what they record goes to :mod:`churnml.workspace.store`, with the signed-in user as
the author.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from churnml.workspace.pages.queries import BadRequest, parse_list_params
from churnml.workspace.store import OUTCOMES, NewActivity

__all__ = ["FORM_LIMITS", "OTHER_PLAY", "activity_from_form", "back_query", "optional_date", "required_date"]

FORM_LIMITS: dict[str, int] = {"max_files": 0, "max_fields": 16, "max_part_size": 16 * 1024}
OTHER_PLAY = "__other__"  # the play menu's "another play" choice: the text field names it


def required_date(fields: Mapping[str, str], name: str) -> dt.date:
    value = optional_date(fields, name)
    if value is None:
        raise BadRequest(f"'{name}': a date (YYYY-MM-DD) is required")
    return value


def optional_date(fields: Mapping[str, str], name: str) -> dt.date | None:
    raw = str(fields.get(name, "")).strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"'{name}': expected a date YYYY-MM-DD, got '{raw[:20]}'") from None


def activity_from_form(customer_id: str, fields: Mapping[str, str], suggested: list[str]) -> NewActivity:
    """The activity a CSM submitted: one of the account's suggested plays, or another one named."""
    choice = str(fields.get("play", "")).strip()
    other = str(fields.get("play_other", "")).strip()
    if choice == OTHER_PLAY or not choice:
        if not other:
            raise BadRequest("'play_other': name the play you ran (or pick a suggested one)")
        play, is_suggested = other, other in suggested
    else:
        play, is_suggested = choice, choice in suggested
    outcome = str(fields.get("outcome", "")).strip()
    if outcome not in OUTCOMES:
        raise BadRequest(f"'outcome': one of {', '.join(OUTCOMES.values())}")
    replaces = str(fields.get("replaces", "")).strip()
    if replaces and not replaces.isdigit():
        raise BadRequest(f"'replaces': an entry number, got '{replaces[:20]}'")
    return NewActivity(customer_id=customer_id, play=play, done_on=required_date(fields, "done_on"), outcome=outcome,
                       note=str(fields.get("note", "")), next_step_on=optional_date(fields, "next_step_on"),
                       play_suggested=is_suggested, replaces=int(replaces) if replaces else None)  # fmt: skip


def back_query(raw: str) -> str:
    """The risk list's query string a back link returns to, rebuilt from known parameters only (a
    malformed one returns to the plain list)."""
    try:
        return urlencode(parse_list_params(dict(parse_qsl(raw[:2000]))).query())
    except BadRequest:
        return ""
