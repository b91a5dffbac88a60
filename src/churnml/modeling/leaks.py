"""The leak guard: columns that know the label, found on the training rows before any tuning.

A published table may carry columns derived from the label (a classifier's scores, a closing date),
and behaviour data a date attribute filled in when the customer left. Trained on, they give a perfect
model that is useless, and tuning on them never ends. A column is left out, with a warning naming it
and its figure, when

* it alone separates the label: its single-column ROC-AUC on the training rows is at least
  ``LEAK_AUC`` (numbers ranked as they are, missing values at either end; categories by their churn
  rate in the other folds, so a level seen once tells nothing);
* its missingness alone does (present for churners, empty for the others, or the reverse);
* it holds dates later than the row's observation date (when rows have one): known only afterwards.

``keep`` names columns to keep knowingly (``--keep-column``); they are reported as kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from churnml.features.sets import FeatureSet

__all__ = ["LEAK_AUC", "Leak", "LeakCheck", "find_leaks", "guard"]

log = logging.getLogger(__name__)

LEAK_AUC = 0.98
ENCODING_FOLDS = 5
DATE_SHARE = 0.95  # a text column whose values are at least this often dates is a date column


@dataclass(frozen=True)
class Leak:
    """One column that knows the label, the rule it breaks and its figure."""

    column: str
    rule: str  # separates | missingness | after_observation
    figure: float  # ROC-AUC, or the share of dated rows after their observation date
    kept: bool = False  # kept on purpose with --keep-column

    def message(self) -> str:
        what = {
            "separates": f"alone separates the label (single-column ROC-AUC {self.figure:.3f} on the training rows)",
            "missingness": f"whether it is empty alone separates the label (ROC-AUC {self.figure:.3f} on the training rows)",
            "after_observation": f"holds dates after the observation date ({self.figure:.1%} of its dated training rows)",
        }[self.rule]
        fate = "kept (--keep-column)" if self.kept else f"left out (keep it with --keep-column {self.column})"
        return f"column {self.column!r} {what}: {fate}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC of a score (ties share their rank), turned so that 0.5 is no information and 1 perfect."""
    ranks = rankdata(score)
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    auc = (ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    return float(max(auc, 1.0 - auc))


def _numeric_auc(values: np.ndarray, y: np.ndarray) -> float:
    """Best single-column ROC-AUC with missing values ranked first or last."""
    missing = np.isnan(values)
    if missing.all():
        return 0.5
    if not missing.any():
        return _auc(values, y)
    low, high = np.nanmin(values) - 1.0, np.nanmax(values) + 1.0
    return max(_auc(np.where(missing, low, values), y), _auc(np.where(missing, high, values), y))


def _category_auc(values: pd.Series, y: np.ndarray, seed: int) -> float:
    """ROC-AUC of each row's level scored by its churn rate in the other folds (unseen: the base rate)."""
    text = values.astype(object).where(values.notna(), "\x00missing").astype(str).to_numpy()
    fold = np.random.default_rng(seed).integers(0, ENCODING_FOLDS, len(text))
    score = np.empty(len(text))
    for f in range(ENCODING_FOLDS):
        fit = fold != f
        rates = pd.Series(y[fit]).groupby(text[fit]).mean()
        score[~fit] = pd.Series(text[~fit]).map(rates).fillna(y[fit].mean()).to_numpy()
    return _auc(score, y)


def _dates(values: pd.Series) -> pd.Series | None:
    """The column as timestamps when its values are (almost all) dates, else None."""
    present = values.dropna()
    if present.empty or pd.api.types.is_numeric_dtype(present):
        return None
    parsed = pd.to_datetime(present.astype(str), errors="coerce", format="mixed")
    if parsed.notna().mean() < DATE_SHARE:
        return None
    return pd.to_datetime(
        values.astype(object).where(values.notna(), None).astype(str), errors="coerce", format="mixed"
    )


@dataclass(frozen=True)
class LeakCheck:
    """What the guard found and did: the feature set without the leaks, and every leak (kept or not)."""

    feature_set: FeatureSet
    leaks: tuple[Leak, ...]

    @property
    def left_out(self) -> list[str]:
        return [leak.column for leak in self.leaks if not leak.kept]


def find_leaks(rows: pd.DataFrame, fs: FeatureSet, seed: int = 0) -> list[Leak]:
    """Every rule each feature column of the training ``rows`` breaks (label in ``churned``)."""
    y = rows["churned"].to_numpy(int)
    if len(np.unique(y)) < 2:
        return []
    dated = pd.to_datetime(rows["observation_date"]) if "observation_date" in rows else None
    leaks = []
    for col in fs.columns:
        values = rows[col]
        if col in fs.categorical_columns:
            auc = _category_auc(values, y, seed)
            dates = _dates(values)
            if dates is not None and dated is not None and dates.notna().any():
                later = float((dates[dates.notna()] > dated[dates.notna()]).mean())
                if later > 0:
                    leaks.append(Leak(col, "after_observation", later))
        else:
            auc = _numeric_auc(pd.to_numeric(values, errors="coerce").to_numpy(float), y)
        missing = values.isna().to_numpy()
        by_missing = _auc(missing.astype(float), y) if missing.any() and not missing.all() else 0.5
        if (
            by_missing >= LEAK_AUC
        ):  # its values then separate too, with the empty ones at one end: one finding
            leaks.append(Leak(col, "missingness", by_missing))
        elif auc >= LEAK_AUC:
            leaks.append(Leak(col, "separates", auc))
    return leaks


def guard(rows: pd.DataFrame, fs: FeatureSet, keep: Sequence[str] = (), seed: int = 0) -> LeakCheck:
    """Leave out the leaking columns of ``fs`` (found on the training ``rows``) but those in ``keep``;
    warn about each, naming it and its figure."""
    unknown = sorted(set(keep) - set(fs.columns))
    if unknown:
        raise ValueError(
            f"--keep-column {', '.join(unknown)}: no such feature column; columns are {fs.columns}"
        )
    leaks = tuple(
        Leak(leak.column, leak.rule, leak.figure, kept=leak.column in keep)
        for leak in find_leaks(rows, fs, seed)
    )
    for leak in leaks:
        log.warning("leak guard: %s", leak.message())
    dropped = tuple(dict.fromkeys(leak.column for leak in leaks if not leak.kept))
    if dropped and set(dropped) >= set(fs.columns):
        raise ValueError(
            f"leak guard: every feature column leaks the label ({', '.join(dropped)}); "
            "keep one knowingly with --keep-column, or check the label column"
        )
    return LeakCheck(fs.without(dropped) if dropped else fs, leaks)
