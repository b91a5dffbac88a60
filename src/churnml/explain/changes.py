"""What changed in an account's reasons since its previous score, with before and after values.

Both dates are explained the same way (same number of reasons, same rules), and the comparison is of
the problem lists themselves: a reason shown now is "new" or "still" a reason, one shown before and
not now is "gone". So the page can never announce as gone a reason it shows. Each line quotes the
same column at both dates ("Logins in the last 30 days: 32 → 12"): the stated column, or the one its
family is tracked by (a trend by its 30-day count).
"""

from __future__ import annotations

import math

import pandas as pd

from churnml.explain.reasons import AccountReasons, Reason
from churnml.features.catalogue import FeatureInfo
from churnml.features.definitions import family
from churnml.features.sentences import as_number, cap, format_number

__all__ = ["CHANGE_COLUMNS", "reason_changes", "tracked_column"]

CHANGE_COLUMNS = ["customer_id", "before_date", "now_date", "status", "signal", "feature", "label", "before", "now",
                  "text", "sentence"]  # fmt: skip


def tracked_column(info: FeatureInfo) -> str:
    """The column that shows a reason's change over time."""
    tracked = family(info.family).tracked_by
    return info.sibling(*tracked) if tracked else info.name


def _shown(value: object) -> str:
    if value is None or isinstance(value, str):
        return value or "none"
    f = float(value)  # type: ignore[arg-type]
    return "none" if math.isnan(f) else format_number(f)


def _line(info: FeatureInfo, before: object, now: object) -> str:
    return f"{cap(info.label)}: {_shown(before)} → {_shown(now)}"


def reason_changes(
    catalogue: list[FeatureInfo], features: pd.DataFrame, explained: list[AccountReasons],
    past_features: pd.DataFrame | None, past_explained: list[AccountReasons],
) -> pd.DataFrame:  # fmt: skip
    """One line per reason shown now or at the account's previous score (``past_*``: earlier dates)."""
    if past_features is None or past_features.empty:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    by_name = {i.name: i for i in catalogue}
    latest = (
        past_features.reset_index(drop=True).groupby("customer_id", sort=False)["observation_date"].idxmax()
    )
    records = []
    for i, cid in enumerate(features["customer_id"]):
        j = latest.get(cid)
        if j is None:
            continue
        then, now = past_explained[j].problems, explained[i].problems
        dates = (past_features.at[j, "observation_date"], features["observation_date"].iloc[i])
        now_signals = {r.signal for r in now}
        then_signals = {r.signal for r in then}
        for r in now:
            records.append(_record(cid, dates, "still" if r.signal in then_signals else "new", r, by_name,
                                   past_features, j, features, i))  # fmt: skip
        for r in then:
            if r.signal not in now_signals:
                records.append(_record(cid, dates, "gone", r, by_name, past_features, j, features, i))
    return pd.DataFrame.from_records(records, columns=CHANGE_COLUMNS)


def _record(
    cid: str, dates: tuple, status: str, reason: Reason, by_name: dict[str, FeatureInfo], past: pd.DataFrame,
    j: int, now: pd.DataFrame, i: int,
) -> tuple:  # fmt: skip
    column = tracked_column(by_name[reason.feature])
    info = by_name[column]
    before, after = past.at[j, column], now[column].iloc[i]
    return (cid, dates[0], dates[1], status, reason.signal, column, info.label, as_number(before), as_number(after),
            _line(info, before, after), reason.sentence)  # fmt: skip
