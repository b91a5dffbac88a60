"""Point-in-time churn labels at a schedule of observation dates.

A training row is (customer_id, observation_date) for a customer active at that date. Its label looks
only forward: churned = 1 if churn (per the spec's definition) happens in
``[date + lead_days, date + horizon_days)``. Customers already churned at the date are not rows.

* **cancellation**: subscription periods are merged when the gap between them is at most
  ``grace_days`` (a quick resubscribe is not churn). Active at t = inside a merged period; churn date =
  the period's end. Customers whose churn falls inside the lead time (too late to act) are left out.
* **inactivity**: active at t = an activity event in ``[t - active_lookback_days, t)``; churned = no
  activity event in ``[t + lead, t + horizon)``.

A row whose horizon (plus grace) runs past what is observed (`churnml.data.DataWindow.observed_until`:
the spec's ``observed_until``, else the end of the last day of date-only data, else the last event)
keeps ``churned`` = NA: it can be scored but not trained on.
"""

from __future__ import annotations

import pandas as pd

from churnml.data.tables import ContractTables, DataWindow
from churnml.engine import quote_literal
from churnml.spec import CancellationChurn, DatasetSpec, InactivityChurn

__all__ = ["observation_dates", "build_labels", "label_margin"]


def label_margin(spec: DatasetSpec) -> pd.Timedelta:
    grace = spec.churn.grace_days if isinstance(spec.churn, CancellationChurn) else 0
    return pd.Timedelta(days=spec.observation.horizon_days + grace)


def observation_dates(
    spec: DatasetSpec, window: DataWindow, labelled_only: bool = True
) -> list[pd.Timestamp]:
    """Dates on the spec's schedule, by default only those whose label window is fully observed."""
    obs = spec.observation
    lookback = spec.churn.active_lookback_days if isinstance(spec.churn, InactivityChurn) else 0
    if obs.start is not None:
        start = pd.Timestamp(obs.start)
    else:
        first = (window.start + pd.Timedelta(days=lookback)).normalize()
        start = first if first.day == 1 else (first + pd.offsets.MonthBegin(1))
    if obs.end is not None:
        end = pd.Timestamp(obs.end)
    else:
        end = window.observed_until - (label_margin(spec) if labelled_only else pd.Timedelta(0))
    dates = []
    t = start
    while t <= end:
        dates.append(t)
        t = t + obs.offset
    return dates


def _dates_sql(dates: list[pd.Timestamp]) -> str:
    if not dates:
        raise ValueError(
            "observation: no observation dates fall inside the data; check observation.start/end"
        )
    values = ", ".join(f"(TIMESTAMP {quote_literal(str(d))})" for d in dates)
    return f"SELECT t FROM (VALUES {values}) v(t)"


def build_labels(
    tables: ContractTables, spec: DatasetSpec, dates: list[pd.Timestamp] | None = None
) -> pd.DataFrame:
    """Rows (customer_id, observation_date, churned[, churn_date]) for customers active at each date."""
    window = tables.window
    dates = dates if dates is not None else observation_dates(spec, window)
    obs = spec.observation
    lead, horizon = f"INTERVAL {obs.lead_days} DAY", f"INTERVAL {obs.horizon_days} DAY"
    until = window.observed_until
    known_until = quote_literal(str(until - label_margin(spec) + pd.Timedelta(days=obs.horizon_days)))
    # a row is labelled when t + horizon <= known_until
    labelled = f"d.t + {horizon} <= TIMESTAMP {known_until}"
    if isinstance(spec.churn, InactivityChurn):
        types = ", ".join(quote_literal(t) for t in spec.churn.activity_event_types)
        sql = f"""
        WITH dates AS ({_dates_sql(dates)}),
        act AS (SELECT DISTINCT customer_id, "timestamp" AS ts FROM events WHERE event_type IN ({types})),
        ids AS (SELECT DISTINCT customer_id FROM act),
        grid AS (SELECT i.customer_id, d.t, d.t + {lead} AS t_lead FROM ids i CROSS JOIN dates d),
        last_before AS (
            SELECT g.customer_id, g.t, g.t_lead, a.ts AS last_ts
            FROM grid g ASOF LEFT JOIN act a ON g.customer_id = a.customer_id AND g.t > a.ts),
        nxt AS (
            SELECT l.customer_id, l.t, l.last_ts, a.ts AS next_ts
            FROM last_before l ASOF LEFT JOIN act a ON l.customer_id = a.customer_id AND l.t_lead <= a.ts)
        SELECT n.customer_id, n.t AS observation_date,
               CASE WHEN NOT ({labelled.replace("d.t", "n.t")}) THEN NULL
                    WHEN n.next_ts IS NULL OR n.next_ts >= n.t + {horizon} THEN 1 ELSE 0 END AS churned,
               NULL::TIMESTAMP AS churn_date
        FROM nxt n
        WHERE n.last_ts >= n.t - INTERVAL {spec.churn.active_lookback_days} DAY
        """
    else:
        grace = f"INTERVAL {spec.churn.grace_days} DAY"
        sql = f"""
        WITH dates AS ({_dates_sql(dates)}),
        s AS (SELECT customer_id, "start", coalesce("end", 'infinity'::TIMESTAMP) AS "end" FROM subscriptions),
        ordered AS (
            SELECT *, max("end") OVER (PARTITION BY customer_id ORDER BY "start", "end"
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
            FROM s),
        grouped AS (
            SELECT *, sum(CASE WHEN prev_end IS NULL OR "start" > prev_end + {grace} THEN 1 ELSE 0 END)
                      OVER (PARTITION BY customer_id ORDER BY "start", "end") AS spell
            FROM ordered),
        spells AS (
            SELECT customer_id, spell, min("start") AS spell_start, max("end") AS spell_end
            FROM grouped GROUP BY customer_id, spell)
        SELECT s.customer_id, d.t AS observation_date,
               CASE WHEN NOT ({labelled}) AND NOT (s.spell_end < d.t + {horizon}
                                                  AND s.spell_end + {grace} <= TIMESTAMP {quote_literal(str(until))})
                    THEN NULL
                    WHEN s.spell_end < d.t + {horizon} THEN 1 ELSE 0 END AS churned,
               CASE WHEN isinf(s.spell_end) THEN NULL ELSE s.spell_end END AS churn_date
        FROM spells s JOIN dates d ON s.spell_start <= d.t AND d.t < s.spell_end
        WHERE NOT (s.spell_end < d.t + {lead})
        """
    frame = tables.con.execute(f"SELECT * FROM ({sql}) ORDER BY observation_date, customer_id").df()
    frame["churned"] = frame["churned"].astype("Int8")
    frame["observation_date"] = frame["observation_date"].astype("datetime64[us]")
    frame["churn_date"] = frame["churn_date"].astype("datetime64[us]")
    return frame.reset_index(drop=True)
