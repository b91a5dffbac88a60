"""Has the scored population moved away from the one the model learnt from?

Per feature: PSI over the reference's fixed bins for numbers, the Jensen–Shannon distance over its
levels for categories (`churnml.features.profile`); the same for the churn probability (prediction
drift); the change in the missing-value rate; levels the reference never saw; and per event type the
change in volume.

A verdict must not depend on the sample size alone (a fixed threshold calls every difference drift at
a million rows and none at a hundred), nor on how a business moves month to month anyway, so each
statistic must pass three bars, the highest wins:

- **beyond sampling noise**: its distribution under no drift, for a sample of this size, is simulated by
  drawing samples of ``n`` rows from the reference's shares (a parametric bootstrap of the reference);
- **beyond the reference's own month-to-month movement**: the statistic of each reference date against
  the others, while the model was right;
- **large enough to matter**: PSI 0.1 (the usual "moderate shift"), JS distance 0.1, a missing rate
  moved 5 points, a volume a quarter.

The first two read their tail from a scaled chi-square matched to the draws or dates, at a level
Bonferroni-corrected over the columns tested, so a chunk without drift raises an alarm in about α of
runs. Columns whose distribution moves with the calendar by construction (tenure, totals since the
account started: `Family.grows_with_time`), and columns the model barely uses (under 1% of its split
gain: their drift cannot move its scores, and prediction drift catches what does), are reported but
raise no alarm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from churnml.features.profile import PREDICTION, ColumnProfile, PopulationProfile, js_distance, psi

__all__ = ["DRIFT_COLUMNS", "DriftSettings", "drift_table", "null_threshold", "tail", "volume_table"]

DRIFT_COLUMNS = ["column", "kind", "statistic", "value", "threshold", "drifted", "alarm", "missing_before",
                 "missing_now", "missing_drifted", "new_levels", "note"]  # fmt: skip


@dataclass(frozen=True)
class DriftSettings:
    """The bars a change must pass to be drift (the ``monitor:`` config section)."""

    alpha: float = 0.05  # chance of a false alarm per chunk, shared by the columns tested (Bonferroni)
    min_psi: float = 0.1  # reported as drift from here ("moderate" by the usual reading of PSI) ...
    min_js: float = 0.1
    min_missing: float = 0.05
    min_volume_change: float = 0.25
    draws: int = 300
    seed: int = 0
    min_importance: float = 0.01  # drift in a feature the model barely uses cannot move its scores
    alarm_psi: float = 0.25  # a number's drift raises an alarm from here ("major": act on it)


def tail(values: np.ndarray, alpha: float) -> float:
    """The value a non-negative statistic exceeds with chance ``alpha``: a chi-square scaled to the
    values' mean and variance gives the tail (far beyond what a few hundred draws or a few dates resolve)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return 0.0
    mean, var = float(values.mean()), float(values.var(ddof=1))
    if mean <= 0 or var <= 0:
        return float(values.max(initial=0.0))
    scale, dof = var / (2 * mean), 2 * mean * mean / var
    return float(scale * stats.chi2.isf(alpha, dof))


def null_threshold(
    shares: np.ndarray, n: int, statistic: str, alpha: float, draws: int, rng: np.random.Generator
) -> float:
    """The value ``statistic`` exceeds with chance ``alpha`` when ``n`` rows come from the reference itself."""
    shares = np.asarray(shares, float)
    shares = shares / shares.sum()
    samples = rng.multinomial(max(int(n), 1), shares, size=draws) / max(int(n), 1)
    if statistic == "psi":
        return tail(psi(shares, samples), alpha)
    return float(
        np.sqrt(tail(js_distance(shares, samples) ** 2, alpha))
    )  # JS divergence is the chi-square-like one


def _threshold(
    ref: ColumnProfile, n: int, alpha: float, settings: DriftSettings, rng: np.random.Generator
) -> float:
    statistic = "js" if ref.categorical else "psi"
    sampling = null_threshold(np.asarray(ref.shares), n, statistic, alpha, settings.draws, rng)
    if statistic == "psi":
        between = tail(np.asarray(ref.between), alpha)
    else:
        between = float(np.sqrt(tail(np.asarray(ref.between) ** 2, alpha)))
    return max(sampling, between, settings.min_js if ref.categorical else settings.min_psi)


def _missing_moved(
    ref: ColumnProfile,
    now: float,
    n: int,
    alpha: float,
    settings: DriftSettings,
    expected: float | None = None,
) -> bool:
    z = stats.norm.isf(alpha / 2)
    sampling = z * np.sqrt(max(ref.missing * (1 - ref.missing), 1e-12) / max(n, 1))
    between = z * float(np.std(ref.missing_between, ddof=1)) if len(ref.missing_between) > 1 else 0.0
    before = ref.missing if expected is None else expected
    return abs(now - before) > max(settings.min_missing, sampling, between)


def _on_course(
    ref: ColumnProfile, values: pd.Series, heading: np.ndarray, threshold: float, alpha: float,
    settings: DriftSettings,
) -> bool:  # fmt: skip
    """Whether ``values`` lie on the way from the reference to where its trend heads (a steady trend
    extrapolated months ahead overshoots as often as not: ageing slows down, so any pace up to the
    trend's counts), within the bars of noise."""
    shares = np.asarray(ref.shares, float)
    closest = min(ref.statistic(values, (1 - w) * shares + w * heading) for w in np.linspace(0, 1, 11))
    missing_now = float(values.isna().mean()) if len(values) else 0.0
    low, high = sorted((ref.missing, float(heading[-1])))
    nearest = min(max(missing_now, low), high)
    return closest <= threshold and not _missing_moved(
        ref, missing_now, len(values), alpha, settings, nearest
    )


def _column_row(
    name: str, ref: ColumnProfile, values: pd.Series, alpha: float, settings: DriftSettings,
    rng: np.random.Generator, quiet: str, heading: np.ndarray | None = None,
) -> dict:  # fmt: skip
    """``heading``: the shares the reference's own trend puts at this date; a change on its way there (the
    column kept moving as it did while the model was right, at up to the same pace) is reported without
    an alarm."""
    n = len(values)
    value = ref.statistic(values)
    threshold = _threshold(ref, n, alpha, settings, rng)
    missing_now = float(values.isna().mean()) if n else 0.0
    missing_moved = _missing_moved(ref, missing_now, n, alpha, settings)
    drifted = value > threshold
    major = drifted and (ref.categorical or value > settings.alarm_psi)
    if (
        (major or missing_moved)
        and not quiet
        and heading is not None
        and _on_course(ref, values, heading, threshold, alpha, settings)
    ):
        quiet = "follows the reference's own trend: not an alarm"
    kind = "prediction" if name == PREDICTION else "category" if ref.categorical else "number"
    return {
        "column": name, "kind": kind, "statistic": "js" if ref.categorical else "psi", "value": value,
        "threshold": threshold, "drifted": bool(drifted), "alarm": bool((major or missing_moved) and not quiet),
        "missing_before": ref.missing, "missing_now": missing_now, "missing_drifted": bool(missing_moved),
        "new_levels": ref.new_levels(values), "note": quiet,
    }  # fmt: skip


def drift_table(
    profile: PopulationProfile, features: pd.DataFrame, probability: np.ndarray, settings: DriftSettings,
    calendar_columns: set[str] = frozenset(), as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:  # fmt: skip
    """One row per feature column and the prediction: statistic, threshold, and whether it drifted.

    ``calendar_columns`` are reported without raising an alarm (they move with the business's age); so is
    a drift the reference's own straight-line trend over its dates explains at ``as_of``.
    """
    rng = np.random.default_rng(settings.seed)
    columns = [c for c in profile.columns if c == PREDICTION or c in features.columns]
    quiet = {c: _quiet(c, profile, settings, calendar_columns) for c in columns}
    alpha = settings.alpha / max(sum(not q for q in quiet.values()), 1)
    months = profile.months_since_start(list(profile.reference_dates))
    now = (
        float(profile.months_since_start([as_of])[0])
        if as_of is not None and profile.reference_dates
        else None
    )
    rows = []
    for name in columns:
        values = pd.Series(probability) if name == PREDICTION else features[name]
        ref = profile.columns[name]
        heading = ref.heading(months, now) if now is not None else None
        rows.append(_column_row(name, ref, values, alpha, settings, rng, quiet[name], heading))
    return pd.DataFrame(rows, columns=DRIFT_COLUMNS)


def _quiet(
    column: str, profile: PopulationProfile, settings: DriftSettings, calendar_columns: set[str]
) -> str:
    """Why a column's drift is reported without an alarm ('' when it raises one)."""
    if column in calendar_columns:
        return "moves with the calendar: not an alarm"
    share = (profile.importance or {}).get(column)
    if column != PREDICTION and share is not None and share < settings.min_importance:
        return f"{share:.1%} of the model's gain: not an alarm"
    return ""


def volume_table(
    profile: PopulationProfile,
    features: pd.DataFrame,
    volume_columns: dict[str, str],
    settings: DriftSettings,
) -> pd.DataFrame:
    """Per event type, the mean 30-day count per account now against the reference dates'."""
    rows = []
    z = stats.norm.isf(settings.alpha / 2 / max(len(volume_columns), 1))
    for t, col in volume_columns.items():
        before = (profile.volume or {}).get(t)
        if not before or col not in features:
            continue
        mean = float(np.mean(before))
        now = float(pd.to_numeric(features[col], errors="coerce").fillna(0.0).mean())
        change = now / mean - 1 if mean > 0 else (np.inf if now > 0 else 0.0)
        noise = z * float(np.std(before, ddof=1)) if len(before) > 1 else 0.0
        drifted = abs(now - mean) > noise and abs(change) >= settings.min_volume_change
        rows.append({"event_type": t, "before": mean, "now": now, "change": change, "drifted": bool(drifted)})
    return pd.DataFrame(rows, columns=["event_type", "before", "now", "change", "drifted"])
