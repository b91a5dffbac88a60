"""How a labelled table is split: out of time when a purged fold fits, else by held-out customers.

* **time** (the default when it fits): the test set is the latest labelled date(s); development dates
  are those whose label window ends before the first test date (a purge gap of the horizon, plus the
  grace of cancellation churn); each backtest fold validates on one development date and trains on the
  dates whose labels end before it.
* **customers** (when no purged fold fits, e.g. a 39-week horizon on 18 months of data, or when the
  spec says ``evaluation: customers``): a share of the customers, chosen by a stable hash of the id, is
  held out. They are the same customers at every date and in every retraining, and never trained on at
  any date. The model trains on every labelled date of the others (folds group rows by customer) and
  is tested on the held-out customers at the latest labelled date.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from churnml.modeling.config import TrainConfig

__all__ = ["Evaluation", "Split", "choose_evaluation", "customer_folds", "holdout_mask", "time_splits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    train_dates: tuple[pd.Timestamp, ...]
    valid_dates: tuple[pd.Timestamp, ...]


def time_splits(
    dates: list[pd.Timestamp], horizon_days: int, folds: int, test_dates: int = 1
) -> tuple[list[Split], tuple[pd.Timestamp, ...], tuple[pd.Timestamp, ...]]:
    """(backtest folds, development dates, test dates) with purge gaps of the horizon."""
    dates = sorted(pd.Timestamp(d) for d in set(dates))
    if len(dates) < test_dates + 3:
        raise ValueError(
            f"time splits: need at least {test_dates + 3} labelled observation dates, got {len(dates)}"
        )
    horizon = pd.Timedelta(days=horizon_days)
    test = tuple(dates[-test_dates:])
    dev = tuple(d for d in dates if d + horizon <= test[0])
    splits = []
    for valid in reversed(dev):
        train = tuple(d for d in dev if d + horizon <= valid)
        if len(train) >= 1:
            splits.append(Split(train, (valid,)))
        if len(splits) == folds:
            break
    if not splits:
        raise ValueError(
            f"time splits: no backtest fold fits: {len(dates)} dates, purge gap {horizon_days} days; "
            "add observation dates or shorten the horizon"
        )
    return splits, dev, test


def holdout_mask(ids: pd.Series, fraction: float) -> np.ndarray:
    """True for the customers held out as the test set: a hash of the id, so the same ones every time."""
    buckets = np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") % 10_000 for i in ids),
        dtype=np.int64, count=len(ids),
    )  # fmt: skip
    return buckets < round(fraction * 10_000)


def customer_folds(
    ids: pd.Series, y: np.ndarray, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds in which all of a customer's rows (every date) fall in one fold."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    codes = pd.factorize(ids.astype(str))[0]
    return [(tr, va) for tr, va in splitter.split(np.zeros(len(y)), y, groups=codes)]


@dataclass
class Evaluation:
    """Which rows develop the model, which test it, the tuning folds, and how to say so."""

    kind: str  # time | customers
    dev: np.ndarray  # row mask
    test: np.ndarray  # row mask
    folds: list[tuple[np.ndarray, np.ndarray]]  # masks (time) or positions (customers) into the dev rows
    description: str
    reason: str = ""  # why customers were held out, if they were
    splits: list[Split] = field(default_factory=list)
    test_dates: tuple[pd.Timestamp, ...] = ()
    dev_dates: tuple[pd.Timestamp, ...] = ()


def choose_evaluation(
    table: pd.DataFrame, purge_days: int, config: TrainConfig, mode: str = "auto"
) -> Evaluation:
    """Out of time when a purged fold fits (``mode`` auto or time), else held-out customers."""
    if mode not in ("auto", "time", "customers"):
        raise ValueError(f"evaluation must be auto, time or customers, got {mode!r}")
    dates = list(table["observation_date"].unique())
    if mode != "customers":
        try:
            splits, dev_dates, test_dates = time_splits(
                dates, purge_days, config.backtest_folds, config.test_dates
            )
        except ValueError as err:
            if mode == "time":
                raise
            reason = f"no purged out-of-time fold fits ({str(err).removeprefix('time splits: ')})"
            log.warning("%s: evaluating on held-out customers instead", reason)
            return _customer_evaluation(table, config, reason)
        return _time_evaluation(table, splits, dev_dates, test_dates)
    return _customer_evaluation(table, config, "the spec says evaluation: customers")


def _time_evaluation(
    table: pd.DataFrame, splits: list[Split], dev_dates: tuple, test_dates: tuple
) -> Evaluation:
    dated = table["observation_date"]
    dev = dated.isin(dev_dates).to_numpy()
    dev_dated = dated[dev]
    folds = [
        (dev_dated.isin(s.train_dates).to_numpy(), dev_dated.isin(s.valid_dates).to_numpy()) for s in splits
    ]
    description = f"out-of-time test ({', '.join(str(d.date()) for d in test_dates)})"
    return Evaluation("time", dev, dated.isin(test_dates).to_numpy(), folds, description, "", splits,
                      tuple(test_dates), tuple(dev_dates))  # fmt: skip


def _customer_evaluation(table: pd.DataFrame, config: TrainConfig, reason: str) -> Evaluation:
    held = holdout_mask(table["customer_id"], config.table_holdout)
    latest = table["observation_date"].max()
    test = held & (table["observation_date"] == latest).to_numpy()
    dev = ~held
    dev_rows = table[dev]
    folds = customer_folds(
        dev_rows["customer_id"], dev_rows["churned"].to_numpy(int), config.customer_folds, config.seed
    )
    n_test = int(test.sum())
    description = (
        f"held-out customers ({n_test:,} at {pd.Timestamp(latest).date()}, {config.table_holdout:.0%} of customers "
        f"by id, never trained on); tuned by {config.customer_folds}-fold cross-validation over the other customers"
    )
    dev_dates = tuple(sorted(pd.Timestamp(d) for d in dev_rows["observation_date"].unique()))
    return Evaluation(
        "customers", dev, test, folds, description, reason, [], (pd.Timestamp(latest),), dev_dates
    )
