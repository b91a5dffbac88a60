"""Account state as of each row's date, written once in Ibis: plan, MRR, seats, renewal, tenure, users.

One row per (customer, date) row from its profile and subscriptions, no events (the distinct users of
the last 30 days come from `churnml.buckets.user_table`, composed into the same query). Like the keyed
events, the definition is an Ibis expression: DuckDB runs the compiled SQL here, and the same
expression runs on a distributed engine (tested on PySpark). Hence no ASOF join, which Ibis cannot
compile for Spark: "the subscription in force at ``t``" is a range join to each subscription's span
up to the customer's next start (of subscriptions starting at once, the larger MRR, then seats, then
plan, so every engine picks the same one).
"""

from __future__ import annotations

import functools

import ibis

from churnml.buckets import DAYS, KEYS, USER_EVENTS, user_table

__all__ = ["ROWS", "CUSTOMERS", "SUBSCRIPTIONS", "account_table", "duckdb_account_sql"]

ROWS = ibis.schema({"_ri": "int64", "ck": "int64", "customer_id": "string", "t": "timestamp"})
CUSTOMERS = ibis.schema(
    {
        "customer_id": "string",
        "signup_date": "timestamp",
        "plan": "string",
        "segment": "string",
        "mrr": "float64",
    }
)
SUBSCRIPTIONS = ibis.schema(
    {"customer_id": "string", "start": "timestamp", "mrr": "float64", "plan": "string", "seats": "float64"}
)
_DAY_US = 86_400_000_000


def _in_force(subscriptions: ibis.Table) -> ibis.Table:
    """Subscriptions with ``next_start``, the start of the customer's next one: each is in force over
    ``(start, next_start]`` as a row sees it, so a row joins exactly one (linear in rows, unlike a join
    to every earlier subscription ranked per row). Of several starting at once the larger MRR, then seats,
    then plan is kept; missing values rank last, whatever an engine's default NULL order."""
    s = subscriptions.filter(subscriptions.start.notnull())
    order = [k for c in ("mrr", "seats", "plan") for k in (ibis.asc(s[c].isnull()), ibis.desc(s[c]))]
    s = s.mutate(tie=ibis.row_number().over(group_by=[s.customer_id, s.start], order_by=order))
    s = s.filter(s.tie == 0)
    return s.mutate(next_start=s.start.lead().over(group_by=s.customer_id, order_by=s.start))


def _subscription_at(rows: ibis.Table, in_force: ibis.Table, days_before: int) -> ibis.Table:
    """``(_ri, mrr, plan, seats)`` of the subscription that started last before ``t - days_before``."""
    r = rows.select(
        "_ri", "customer_id", at=rows.t - ibis.interval(days=days_before) if days_before else rows.t
    )
    s = in_force
    on = [r.customer_id == s.customer_id, s.start < r.at, s.next_start.isnull() | (r.at <= s.next_start)]
    return r.join(s, on).select("_ri", s.mrr, s.plan, s.seats)


def _months(ts: ibis.TimestampValue) -> ibis.IntegerValue:
    """Calendar months since year 0: their difference counts month boundaries, as date_diff('month') does."""
    return ts.year() * 12 + ts.month()


def _days(later: ibis.TimestampValue, earlier: ibis.TimestampValue) -> ibis.FloatingValue:
    return later.delta(earlier, unit="microsecond") / _DAY_US


def account_table(
    rows: ibis.Table,
    customers: ibis.Table,
    subscriptions: ibis.Table,
    users: ibis.Table,
    *,
    attributes: tuple[str, ...] = (),
    attribute_columns: tuple[str, ...] = (),
    term_months: int = 1,
    ordered: bool = True,
) -> ibis.Table:
    """Account features per row of ``rows`` with its ``_ri`` and customer key ``ck``, ordered by ``_ri``
    (unless not ``ordered``: Spark partitions the rows by customer instead of sorting them globally).

    ``users`` holds ``(ck, t, users)``; ``attributes`` are profile columns returned as
    ``attribute_columns``. Tenure counts from the signup date, else from the first subscription that
    started before the date; renewal falls every ``term_months`` after the first subscription (else
    the signup date).
    """
    first = subscriptions.group_by("customer_id").aggregate(first_start=subscriptions.start.min())
    in_force = _in_force(subscriptions)
    now, before = _subscription_at(rows, in_force, 0), _subscription_at(rows, in_force, 90)
    c = customers.select("customer_id", "signup_date", "segment", profile_plan="plan", profile_mrr="mrr",
                         **{out: customers[a] for a, out in zip(attributes, attribute_columns, strict=True)})  # fmt: skip
    b = rows.left_join(c, rows.customer_id == c.customer_id).drop("customer_id_right")
    b = b.left_join(first, b.customer_id == first.customer_id).drop("customer_id_right")
    started = b.first_start < b.t  # NULL when there is no subscription: the signup date then
    b = b.mutate(
        since=ibis.coalesce(b.signup_date, ibis.ifelse(started, b.first_start, ibis.null("timestamp"))),
        anchor=ibis.ifelse(started.fill_null(False), b.first_start, b.signup_date),
    )
    # the renewal on or after t: anchor + term * k months, k the whole terms since the anchor
    terms = (_months(b.t) - _months(b.anchor)) // term_months
    current = b.anchor + (terms * term_months).as_interval("M")
    following = b.anchor + ((terms + 1) * term_months).as_interval("M")
    renewal = ibis.ifelse(current > b.t, current, following)
    b = b.mutate(renewal=ibis.ifelse(b.anchor < b.t, renewal, ibis.null("timestamp")))
    n = now.select("_ri", now_mrr="mrr", now_plan="plan", now_seats="seats")
    p = before.select("_ri", before_mrr="mrr")
    u = users.select(u_ck="ck", u_t="t", users="users")
    j = b.left_join(n, b._ri == n._ri).drop("_ri_right")
    j = j.left_join(p, j._ri == p._ri).drop("_ri_right")
    j = j.left_join(u, [j.ck == u.u_ck, j.t == u.u_t])
    seats_in_use = j.users.fill_null(0) / ibis.ifelse(j.now_seats == 0, ibis.null("float64"), j.now_seats)
    out = j.select(
        "_ri", "ck", "segment", *attribute_columns,
        tenure_days=_days(j.t, j.since),
        active_users_30d=j.users,
        mrr=ibis.coalesce(j.now_mrr, j.profile_mrr),
        mrr_change_90d=j.now_mrr - j.before_mrr,
        seats=j.now_seats,
        seats_used_ratio=seats_in_use,
        plan=ibis.coalesce(j.now_plan, j.profile_plan),
        days_to_renewal=_days(j.renewal, j.t),
    )  # fmt: skip
    return out.order_by("_ri") if ordered else out


@functools.cache
def duckdb_account_sql(
    attributes: tuple[tuple[str, str, str], ...], term_months: int, window: int, distinct_users_first: bool
) -> str:
    """DuckDB SQL for `account_table` over ``_rows``, ``customers``, ``subscriptions`` and the distinct
    users of ``_user_events`` (`user_table` over ``_keys`` and ``_daymap``), compiled once per shape.

    ``attributes`` are (profile column, Ibis type, output column).
    """
    customers = ibis.table(
        ibis.schema({**CUSTOMERS, **{a: dtype for a, dtype, _ in attributes}}), name="customers"
    )
    users = user_table(
        ibis.table(USER_EVENTS, name="_user_events"), ibis.table(KEYS, name="_keys"),
        ibis.table(DAYS, name="_daymap"), window=window, distinct_first=distinct_users_first,
    )  # fmt: skip
    expr = account_table(
        ibis.table(ROWS, name="_rows"), customers, ibis.table(SUBSCRIPTIONS, name="subscriptions"), users,
        attributes=tuple(a for a, _, _ in attributes), attribute_columns=tuple(o for _, _, o in attributes),
        term_months=term_months,
    )  # fmt: skip
    return ibis.to_sql(expr, dialect="duckdb")
