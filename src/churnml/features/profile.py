"""The training population as drift is measured against it: fixed bins, shares, missing rates, volumes.

Fitted when a model is trained, on every row of its latest labelled dates (churners included: drift is
about who is scored, not who stayed), and saved with the model, so `churnml monitor` compares a later
population with what the model learnt from, wherever the model is served:

- numbers: up to `BINS` bins cut at the reference's quantiles, plus a bin for missing values; the bins are
  fixed here, so a later population is counted in the same bins (tools that re-bin per sample drift with
  it); categories: the reference's levels, plus "other" for levels it never saw; the calibrated churn
  probability binned like a number (prediction drift);
- how much each of those moved **between the reference's own dates** (PSI or JS of each date against the
  pooled dates, and each date's missing rate): a business is not a stationary sample (a quarterly NPS
  survey wave, onboarding cohorts), and what it did month to month while the model was right is not drift;
- per event type, the mean events per account in the last 30 days, on each date (volume);
- a recalibration of the probabilities on the labelled rows the model did not learn from: performance
  estimated from probabilities (CBPE) needs them calibrated on the population the model is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnml.features.definitions import TREND, column_name, slug
from churnml.features.sets import FeatureSet

__all__ = [
    "BINS", "PREDICTION", "REFERENCE_DATES", "ColumnProfile", "PopulationProfile", "fit_population_profile",
    "js_distance", "psi", "volume_columns",
]  # fmt: skip

BINS = 10
MAX_LEVELS = 50  # a category's most common levels get their own share; the rest pool as "other"
MAX_KNOWN_LEVELS = 5_000  # levels remembered as seen (an id-like column would hold one per account)
PREDICTION = "__prediction__"
REFERENCE_DATES = 6  # latest labelled dates pooled as the reference (two quarters of monthly dates)
EPS = 1e-4  # smoothing of empty bins (PSI and JS take logs)


def _smooth(shares: np.ndarray) -> np.ndarray:
    shares = np.asarray(shares, float) + EPS
    return shares / shares.sum(axis=-1, keepdims=True)


def psi(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Population stability index of each row of ``current`` against ``reference`` (shares per bin)."""
    p, q = _smooth(reference), _smooth(current)
    return np.sum((q - p) * np.log(q / p), axis=-1)


def js_distance(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance (the square root of the divergence, base 2: 0 to 1)."""
    p, q = _smooth(reference), _smooth(current)
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / m), axis=-1) + 0.5 * np.sum(q * np.log2(q / m), axis=-1)
    return np.sqrt(np.maximum(divergence, 0.0))


@dataclass(frozen=True)
class ColumnProfile:
    """One column's reference distribution over fixed bins (numbers) or levels (categories)."""

    edges: tuple[float, ...] = ()  # inner cut points of the number bins
    levels: tuple[str, ...] = ()  # categories, most common first; then "other"
    shares: tuple[float, ...] = ()  # per bin or level (and other), then missing
    missing: float = 0.0
    between: tuple[float, ...] = ()  # the statistic (PSI or JS) of each reference date against the pool
    missing_between: tuple[float, ...] = ()  # each reference date's missing rate
    by_date: tuple[tuple[float, ...], ...] = ()  # each reference date's shares: where the column was heading
    # every level the reference saw (up to MAX_KNOWN_LEVELS), beyond the binned most common ones: a rare
    # level the model trained on is not "new" when it turns up more often later
    known: tuple[str, ...] = ()

    def heading(self, months: np.ndarray, now: float) -> np.ndarray | None:
        """The shares the reference's own steady trend (per bin, a straight line in the log of its share over the dates ``months``) puts at
        ``now``: how a column that moves steadily with the business (accounts ageing, a growing base)
        would look by then without any drift. None with fewer than three dates."""
        shares = np.asarray(self.by_date, float)
        if shares.ndim != 2 or len(shares) < 3 or len(months) != len(shares):
            return None
        logs = np.log(_smooth(shares))  # on the log scale a share that shrinks steadily never turns negative
        t = np.asarray(months, float) - float(np.mean(months))
        slope = (t @ (logs - logs.mean(axis=0))) / max(float(t @ t), 1e-12)
        expected = np.exp(logs.mean(axis=0) + slope * (now - float(np.mean(months))))
        return expected / expected.sum()

    @property
    def categorical(self) -> bool:
        return bool(self.levels)

    def counts(self, values: pd.Series) -> np.ndarray:
        """How many of ``values`` fall in each bin (or level, other, missing)."""
        if self.categorical:
            missing = values.isna().to_numpy()
            codes = (
                pd.Index(list(self.levels)).get_indexer(values.astype("string").fillna("")).astype(np.int64)
            )
            codes = np.where(codes < 0, len(self.levels), codes)  # a level never seen: "other"
            codes[missing] = len(self.levels) + 1
            return np.bincount(codes, minlength=len(self.levels) + 2).astype(float)
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        missing = np.isnan(x)
        bins = np.searchsorted(np.asarray(self.edges), x[~missing], side="right")
        counts = np.bincount(bins, minlength=len(self.edges) + 1).astype(float)
        return np.append(counts, missing.sum())

    def statistic(self, values: pd.Series, against: np.ndarray | None = None) -> float:
        """PSI (numbers) or JS distance (categories) of ``values`` against the reference (or ``against``,
        shares over the same bins)."""
        counts = self.counts(values)
        current = counts / max(counts.sum(), 1.0)
        reference = np.asarray(self.shares if against is None else against, float)
        return float((js_distance if self.categorical else psi)(reference, current))

    def new_levels(self, values: pd.Series, min_share: float = 0.01) -> dict[str, float]:
        """Levels the reference never saw, with their share (from ``min_share``)."""
        if not self.categorical or values.empty:
            return {}
        shares = values.dropna().astype(str).value_counts() / len(values)
        seen = set(self.levels) | set(self.known)
        return {str(k): float(v) for k, v in shares.items() if k not in seen and v >= min_share}

    @classmethod
    def fit(cls, values: pd.Series, dates: np.ndarray, categorical: bool) -> ColumnProfile:
        """Bins (or levels) and shares of the pooled values, and how each date stood against them."""
        if categorical:
            ordered = [str(v) for v in values.dropna().astype(str).value_counts().index]
            levels = tuple(ordered[:MAX_LEVELS])
            shape = cls(levels=levels or ("",), known=tuple(ordered[MAX_LEVELS:MAX_KNOWN_LEVELS]))
        else:
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            present = x[~np.isnan(x)]
            cuts = np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1]) if len(present) else []
            shape = cls(edges=tuple(float(e) for e in np.unique(cuts)))
        counts = shape.counts(values)
        total = max(counts.sum(), 1.0)
        stat = js_distance if categorical else psi
        between, missing, by_date = [], [], []
        if len(np.unique(dates)) > 1:  # each date against the other dates pooled (left out: out of sample)
            for d in np.unique(dates):
                own = shape.counts(values[dates == d])
                rest = counts - own
                between.append(float(stat(rest / max(rest.sum(), 1.0), own / max(own.sum(), 1.0))))
                missing.append(float(own[-1] / max(own.sum(), 1.0)))
                by_date.append(tuple(float(c) for c in own / max(own.sum(), 1.0)))
        return cls(shape.edges, shape.levels, tuple(float(c / total) for c in counts), float(counts[-1] / total),
                   tuple(between), tuple(missing), tuple(by_date), shape.known)  # fmt: skip


@dataclass(frozen=True)
class PopulationProfile:
    """Every feature column's reference, the prediction's, event types and volumes, and a recalibration."""

    columns: dict[str, ColumnProfile]
    rows: int
    date: str  # the reference's dates
    event_types: tuple[str, ...] = ()
    volume: dict[str, tuple[float, ...]] | None = (
        None  # event type -> its mean 30-day count per account, per date
    )
    # on the logit z of the probability: slope, intercept and (optionally) the coefficient of z squared
    calibration: tuple[float, ...] = (1.0, 0.0)
    calibration_draws: tuple[tuple[float, ...], ...] = ()  # the same fitted on bootstrap resamples
    importance: dict[str, float] | None = None  # each column's share of the model's total split gain
    reference_dates: tuple[str, ...] = ()  # the reference's dates (ColumnProfile.by_date's order)
    calibration_dates: int = 1  # how many dates the recalibration was fitted on (its draws resample them)

    def months_since_start(self, dates: list[pd.Timestamp | str]) -> np.ndarray:
        """Dates in months after the reference's first date (what a column's trend is fitted over)."""
        first = pd.Timestamp(self.reference_dates[0]) if self.reference_dates else pd.Timestamp(0)
        return np.array([(pd.Timestamp(d) - first).days / 30.4375 for d in dates], float)

    def recalibrate_draws(self, p: np.ndarray) -> list[np.ndarray]:
        """The probabilities under each bootstrap recalibration: how unsure the recalibration is."""
        return [PopulationProfile._recalibrated(p, draw) for draw in self.calibration_draws]

    @staticmethod
    def _recalibrated(p: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
        a, b, c = (*coefficients, 0.0)[:3]  # models from before the quadratic term have two
        p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
        z = np.log(p / (1 - p))
        return 1.0 / (1.0 + np.exp(-(a * z + b + c * z * z)))

    def recalibrate(self, p: np.ndarray) -> np.ndarray:
        """The probabilities recalibrated on the reference's latest date (for performance estimates)."""
        return PopulationProfile._recalibrated(p, self.calibration)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "date": self.date, "event_types": list(self.event_types),
                "volume": {t: list(v) for t, v in (self.volume or {}).items()}, "calibration": list(self.calibration),
                "calibration_draws": [list(d) for d in self.calibration_draws], "importance": self.importance or {},
                "reference_dates": list(self.reference_dates), "calibration_dates": self.calibration_dates,
                "columns": {c: {"edges": list(p.edges), "levels": list(p.levels), "shares": list(p.shares),
                                "missing": p.missing, "between": list(p.between),
                                "missing_between": list(p.missing_between), "by_date": [list(s) for s in p.by_date],
                                "known": list(p.known)}
                            for c, p in self.columns.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> PopulationProfile:
        def floats(values: object) -> tuple[float, ...]:
            return tuple(float(v) for v in (values or ()))  # type: ignore[union-attr]

        columns = {
            c: ColumnProfile(floats(p.get("edges")), tuple(str(v) for v in p.get("levels", ())), floats(p.get("shares")),
                             float(p.get("missing", 0.0)), floats(p.get("between")), floats(p.get("missing_between")),
                             tuple(floats(s) for s in p.get("by_date") or ()), tuple(str(v) for v in p.get("known") or ()))
            for c, p in data.get("columns", {}).items()
        }  # fmt: skip
        volume = {str(t): floats(v) for t, v in (data.get("volume") or {}).items()}
        calibration = tuple(float(v) for v in data.get("calibration") or (1.0, 0.0))
        draws = tuple(tuple(float(v) for v in d) for d in data.get("calibration_draws") or ())
        importance = {str(k): float(v) for k, v in (data.get("importance") or {}).items()} or None
        return cls(columns, int(data.get("rows", 0)), str(data.get("date", "")), tuple(data.get("event_types", ())),
                   volume, calibration, draws, importance,
                   tuple(str(d) for d in data.get("reference_dates") or ()), int(data.get("calibration_dates", 1)))  # fmt: skip


def volume_columns(fs: FeatureSet) -> dict[str, str]:
    """Each event type's 30-day count column: its volume per account."""
    return {t: column_name("count_window", slug(t), TREND) for t in fs.event_types}


CALIBRATION_DRAWS = 40


def _calibration(
    probability: np.ndarray, labels: np.ndarray, dates: np.ndarray
) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """A logistic recalibration of the probabilities on labelled rows, on their logit z and z squared
    (slope, intercept, curvature), and the same on bootstrap resamples (a few hundred churners leave it
    uncertain). Platt's straight line forces a shape: where the true curve bends, the chances it gives are
    too spread out and CBPE overestimated ROC-AUC by about 0.01 even on the rows it was fitted on; the
    square term lets it bend, with one more parameter only. The resamples draw dates, then rows within
    them: a month's accounts share its circumstances, so how well the model ranks moves from one date to
    the next by more than its rows alone would say."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, int)
    if len(np.unique(y)) < 2:
        return (1.0, 0.0), ()
    p = np.clip(np.asarray(probability, float), 1e-6, 1 - 1e-6)
    z = np.log(p / (1 - p))
    x = np.column_stack([z, z * z])

    def fit(rows: np.ndarray) -> tuple[float, ...]:
        model = LogisticRegression(C=1e6, max_iter=1000).fit(x[rows], y[rows])
        return float(model.coef_[0, 0]), float(model.intercept_[0]), float(model.coef_[0, 1])

    rng = np.random.default_rng(0)
    by_date = [np.flatnonzero(dates == d) for d in np.unique(dates)]

    def resample() -> np.ndarray:
        chosen = rng.integers(0, len(by_date), len(by_date)) if len(by_date) > 1 else [0]
        return np.concatenate([rng.choice(by_date[i], len(by_date[i])) for i in chosen])

    samples = (resample() for _ in range(CALIBRATION_DRAWS))
    draws = tuple(fit(rows) for rows in samples if len(np.unique(y[rows])) == 2)  # a draw of one class: none
    return fit(np.arange(len(y))), draws


def fit_population_profile(
    rows: pd.DataFrame, fs: FeatureSet, probability: np.ndarray, labels: np.ndarray | None = None,
    unseen: np.ndarray | None = None, importance: np.ndarray | None = None,
) -> PopulationProfile:  # fmt: skip
    """The profile of a model's reference rows (its latest labelled dates) and their probabilities.

    ``unseen`` marks the rows the model was not trained on (default: all): the prediction's reference and
    the recalibration (on ``labels``) use only those, since a model is surer of the rows it learnt from.
    ``importance`` (the model's split gain per column) says which drift can move the model's scores.
    """
    dates = rows["observation_date"].to_numpy() if "observation_date" in rows else np.zeros(len(rows))
    columns = {c: ColumnProfile.fit(rows[c], dates, c in fs.categorical_columns) for c in fs.columns}
    unseen = np.ones(len(rows), bool) if unseen is None else np.asarray(unseen, bool)
    predicted = pd.Series(np.asarray(probability, float)[unseen])
    columns[PREDICTION] = ColumnProfile.fit(predicted, dates[unseen], False)
    volume = {}
    for t, col in volume_columns(fs).items():
        x = pd.to_numeric(rows[col], errors="coerce").fillna(0.0)
        volume[t] = tuple(float(x[dates == d].mean()) for d in np.unique(dates))
    latest = unseen  # every labelled row the model did not learn from
    probability = np.asarray(probability, float)
    calibration, draws = (
        _calibration(probability[latest], np.asarray(labels)[latest], dates[latest])
        if labels is not None
        else ((1.0, 0.0), ())
    )
    span = (
        f"{pd.Timestamp(dates.min()).date()} to {pd.Timestamp(dates.max()).date()}"
        if "observation_date" in rows
        else ""
    )
    gain = (
        dict(zip(fs.columns, np.asarray(importance, float), strict=True)) if importance is not None else None
    )
    total = sum(gain.values()) if gain else 0.0
    shares = {c: g / total for c, g in gain.items()} if gain and total > 0 else None
    reference_dates = (
        tuple(str(pd.Timestamp(d).date()) for d in np.unique(dates)) if "observation_date" in rows else ()
    )
    return PopulationProfile(columns, len(rows), span, tuple(fs.event_types), volume, calibration, draws, shares,
                             reference_dates, len(np.unique(dates[latest])))  # fmt: skip
