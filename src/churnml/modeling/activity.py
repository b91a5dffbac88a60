"""BG/NBD for inactivity churn, fitted point in time on the development rows only.

Each activity type's parameters are fitted on the development rows' point-in-time summaries (days with
the event, since the first, since the last: every row is a customer's history as of its date), then
carried by the feature set, which computes the probability alive and the days expected in the horizon
for every row, development and test alike, from its own summary. The model's own churn probability
(no activity of any activity type in the horizon) is scored as a baseline beside churnml.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from churnml.features.btyd import WEEK, BgNbd, fit_bgnbd, summary, with_fitted_columns
from churnml.features.definitions import column_name, slug
from churnml.features.sets import FeatureSet

__all__ = ["MIN_HISTORIES", "bgnbd_churn_probability", "fit_activity"]

log = logging.getLogger(__name__)

MIN_HISTORIES = 50  # fewer customer histories than this cannot pin down four parameters


def _summary(rows: pd.DataFrame, event_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = slug(event_type)
    cols = [column_name(k, s) for k in ("active_days_total", "days_since_first", "days_since_last")]
    return summary(*(rows[c].to_numpy(dtype=float, na_value=np.nan) for c in cols))


def fit_activity(
    dev: pd.DataFrame, fs: FeatureSet, event_types: Sequence[str], horizon_days: int
) -> tuple[FeatureSet, pd.DataFrame]:
    """The feature set with BG/NBD parameters fitted on ``dev`` for each activity type it holds, and
    ``dev`` with their columns."""
    fitted: dict[str, BgNbd] = {}
    for event_type in event_types:
        if event_type not in fs.event_types:
            continue
        x, t_x, T = _summary(dev, event_type)  # noqa: N806
        seen = ~np.isnan(x)
        if seen.sum() < MIN_HISTORIES:
            log.warning(
                "BG/NBD: %d %s histories in the development rows, too few to fit", seen.sum(), event_type
            )
            continue
        try:
            fitted[event_type] = fit_bgnbd(x[seen], t_x[seen], T[seen])
        except ValueError as err:
            log.warning("BG/NBD for %s: %s; no such features", event_type, err)
            continue
        log.info("BG/NBD for %s (weeks): %s", event_type, fitted[event_type])
    if not fitted:
        return fs, dev
    fs = fs.with_btyd(fitted, horizon_days)
    return fs, with_fitted_columns(dev, fs.btyd, horizon_days)


def bgnbd_churn_probability(rows: pd.DataFrame, fs: FeatureSet) -> np.ndarray | None:
    """BG/NBD's probability of no activity of any fitted type in the horizon (types taken as
    independent; a customer who never had a type counts as having none of it ahead either)."""
    if not fs.btyd:
        return None
    p = np.ones(len(rows))
    for event_type, model in fs.btyd:
        x, t_x, T = _summary(rows, event_type)  # noqa: N806
        seen = ~np.isnan(x)
        none = np.ones(len(rows))
        none[seen] = model.p_none(fs.btyd_horizon_days / WEEK, x[seen], t_x[seen], T[seen])
        p *= none
    return p
