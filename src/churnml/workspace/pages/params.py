"""What the risk list's URL asks for: filters, sort, page, and the call list's capacity and tier.

Parsed once per request into a `ListParams`; every link, form and back link is built from it again
(`ListParams.query`), so the filters survive navigation. A value the pages cannot use is a
`BadRequest` naming the parameter (a 400, never a 500).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "CALL_BY", "DEFAULT_CAPACITY", "DEFAULT_MIN_TIER", "DEFAULT_OWNER_CAPACITY", "MAX_CAPACITY", "MISSING_IS_OLDEST",
    "PAGE_SIZE", "SORTS", "TIERS", "BadRequest", "ListParams", "number_param", "parse_list_params",
]  # fmt: skip

PAGE_SIZE = 100  # rows per page of the risk list: 200k accounts must not render at once
DEFAULT_CAPACITY = 20  # accounts a CSM team can call in a week, until they say otherwise
DEFAULT_OWNER_CAPACITY = 5  # accounts one CSM can call in a week
DEFAULT_MIN_TIER = "medium"  # below it the account page says "no action needed": not a call to make
MAX_CAPACITY = 1_000_000
TIERS = ("high", "medium", "low")
# sortable columns: parameter -> (SQL expression, its natural first direction)
SORTS = {
    "revenue": ("revenue_at_risk", "desc"),
    "probability": ("probability", "desc"),
    "change": ("probability_change", "desc"),
    "renewal": ("renewal_date", "asc"),
    "last_touch": ("last_touch", "asc"),
    "saved": ("expected_revenue_saved", "desc"),  # with an uplift model (`churnml impact --fit-uplift`)
}
# columns whose missing value means "longest ago" (never contacted): first when sorted ascending
MISSING_IS_OLDEST = frozenset({"last_touch"})
CALL_BY = {
    "risk": "revenue_at_risk",
    "saved": "expected_revenue_saved",
}  # what the call list takes the most of
# columns a workspace from an older `churnml score` may lack, read as NULL there


class BadRequest(ValueError):
    """A query parameter or form field the pages cannot use; the message names it."""


@dataclass(frozen=True)
class ListParams:
    """The risk list's query: filters (any case), sort, page and the call list's capacity and tier."""

    tier: str = ""
    segment: str = ""
    owner: str = ""
    search: str = ""
    sort: str = "revenue"
    direction: str = "desc"
    page: int = 1
    capacity: int = DEFAULT_CAPACITY
    owner_capacity: int = DEFAULT_OWNER_CAPACITY
    min_tier: str = DEFAULT_MIN_TIER
    call_by: str = "risk"

    @property
    def call_capacity(self) -> int:
        """Filtered to one owner, the call list is that CSM's week; otherwise the team's."""
        return self.owner_capacity if self.owner else self.capacity

    def where(self) -> tuple[str, list[Any]]:
        """SQL condition over the list's rows and its parameters."""
        clauses, params = ["TRUE"], []
        for column, value in (("risk_tier", self.tier), ("segment", self.segment), ("owner", self.owner)):
            if value:
                clauses.append(f"lower({column}) = lower(?)")
                params.append(value)
        if self.search:
            clauses.append(
                "(contains(lower(customer_id), lower(?)) OR contains(lower(coalesce(name, '')), lower(?)))"
            )
            params += [self.search, self.search]
        return " AND ".join(clauses), params

    def query(self, **changes: Any) -> dict[str, str]:
        """The query string that shows this list (links, forms, back links), without defaults."""
        p = replace(self, **changes)
        pairs = {"q": p.search, "tier": p.tier, "segment": p.segment, "owner": p.owner,
                 "sort": "" if p.sort == "revenue" else p.sort, "dir": "" if p.direction == SORTS[p.sort][1] else p.direction,
                 "capacity": "" if p.capacity == DEFAULT_CAPACITY else str(p.capacity),
                 "owner_capacity": "" if p.owner_capacity == DEFAULT_OWNER_CAPACITY else str(p.owner_capacity),
                 "min_tier": "" if p.min_tier == DEFAULT_MIN_TIER else (p.min_tier or "any"),
                 "call_by": "" if p.call_by == "risk" else p.call_by, "page": "" if p.page == 1 else str(p.page)}  # fmt: skip
        return {k: v for k, v in pairs.items() if v}


def number_param(
    params: Mapping[str, str], name: str, default: float, low: float, high: float, kind: type = int
) -> Any:
    """A whole (``kind=int``) or decimal number from the query, within [low, high]; else a BadRequest."""
    raw = str(params.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise BadRequest(f"'{name}' must be {what}, got '{raw[:40]}'") from None
    if not low <= value <= high:  # NaN fails this too
        raise BadRequest(f"'{name}' must be between {low:g} and {high:g}, got {raw[:40]}")
    return value


def _choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = str(params.get(name, "")).strip().lower()
    if not raw:
        return default
    if raw not in allowed:
        raise BadRequest(f"'{name}' must be one of {', '.join(allowed)}, got '{raw[:40]}'")
    return raw


def parse_list_params(params: Mapping[str, str]) -> ListParams:
    """The risk list's parameters; a BadRequest names the one that is wrong."""
    sort = _choice(params, "sort", tuple(SORTS), "revenue")
    min_tier = _choice(params, "min_tier", ("high", "medium", "low", "any"), DEFAULT_MIN_TIER)
    return ListParams(
        tier=str(params.get("tier", "")).strip()[:100], segment=str(params.get("segment", "")).strip()[:200],
        owner=str(params.get("owner", "")).strip()[:200], search=str(params.get("q", "")).strip()[:200],
        sort=sort, direction=_choice(params, "dir", ("asc", "desc"), SORTS[sort][1]),
        page=number_param(params, "page", 1, 1, 10_000_000),
        capacity=number_param(params, "capacity", DEFAULT_CAPACITY, 0, MAX_CAPACITY),
        owner_capacity=number_param(params, "owner_capacity", DEFAULT_OWNER_CAPACITY, 0, MAX_CAPACITY),
        min_tier="" if min_tier in ("any", "low") else min_tier, call_by=_choice(params, "call_by", tuple(CALL_BY), "risk"),
    )  # fmt: skip
