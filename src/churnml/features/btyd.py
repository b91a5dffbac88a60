"""Buy-till-you-die features for non-contractual churn: the BG/NBD model (Fader, Hardie & Lee, 2005).

A customer of an activity type (purchases) makes repeat transactions at a rate λ while alive, λ varying
across customers as Gamma(r, α), and after each repeat transaction drops out with probability p, p
varying as Beta(a, b). From a customer's history as of a date, `x` repeat transactions (days with an
event after the first), `t_x` the time of the last one and `T` the time since the first (in weeks),
the model gives the probability that the customer is still alive, the transactions expected in the
next ``t`` weeks, and the probability of none (the model's own churn probability, a baseline).

The parameters are fitted by maximum likelihood on the development rows only (`fit_bgnbd`), travel with
the model's feature set, and turn each row's point-in-time summary into its features (`btyd_columns`),
identically in training, batch scoring and the online path. The likelihood is written with NumPy and
SciPy (lifelines does not install with pandas 3).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from churnml.features.definitions import column_name, slug

__all__ = ["BgNbd", "BTYD_COLUMNS", "btyd_columns", "fit_bgnbd", "summary", "with_fitted_columns", "WEEK"]

WEEK = 7.0  # days: the model's time unit (its parameters read naturally in weeks)
BTYD_COLUMNS = ("btyd_p_alive", "btyd_expected")  # the families `btyd_columns` fills (definitions.py)


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters: transaction rate ~ Gamma(r, rate α) (α in weeks), dropout ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def log_likelihood(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803
        """Each customer's log-likelihood of (x, t_x, T) (FHL 2005, equation 6)."""
        from scipy.special import betaln, gammaln

        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        head = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        alive = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + T)
        repeat = x > 0
        dropped = np.where(
            repeat,
            betaln(a + 1, np.maximum(b + x - 1, 1e-12)) - betaln(a, b) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
        return head + np.logaddexp(alive, dropped)

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803
        """P(still alive at T | x, t_x, T); 1 for a customer with no repeat transaction yet."""
        from scipy.special import expit

        log_odds_dead = (
            np.log(self.a) - np.log(np.maximum(self.b + x - 1, 1e-12))
            + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
        )  # fmt: skip
        return np.where(x > 0, expit(-log_odds_dead), 1.0)

    def expected(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803
        """E[transactions in (T, T + t] | x, t_x, T] (FHL 2005, equation 10), with Euler's transform
        of the hypergeometric function so its parameters do not grow with x."""
        from scipy.special import hyp2f1

        a = self.a if abs(self.a - 1.0) > 1e-6 else 1.0 + 1e-6  # a = 1 is a removable singularity
        c = a + self.b + x - 1
        z = t / (self.alpha + T + t)
        # ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; c; z) = (1-z)^(a-1) · 2F1(a+b-1-r, a-1; c; z)
        tail = (1 - z) ** (a - 1) * hyp2f1(a + self.b - 1 - self.r, a - 1, c, z)
        return self.p_alive(x, t_x, T) * c / (a - 1) * (1 - tail)

    def p_none(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:  # noqa: N803
        """P(no transaction in (T, T + t] | x, t_x, T): dead, or alive and silent (dropout happens only
        after a transaction, and λ given the history is Gamma(r + x, α + T))."""
        alive = self.p_alive(x, t_x, T)
        return 1 - alive + alive * ((self.alpha + T) / (self.alpha + T + t)) ** (self.r + x)


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> BgNbd:  # noqa: N803
    """Maximum-likelihood parameters (L-BFGS-B on their logarithms); identical histories are pooled
    with their counts, so many rows cost little more than the distinct ones."""
    from scipy.optimize import minimize

    x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))  # noqa: N806
    if len(x) == 0:
        raise ValueError("BG/NBD: no customer histories to fit")
    rows = np.round(np.column_stack([x, t_x, T]), 6)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    ux, utx, uT = unique.T  # noqa: N806
    scale = counts.sum()

    def loss(theta: np.ndarray) -> float:
        model = BgNbd(*np.exp(theta))
        value = -(counts * model.log_likelihood(ux, utx, uT)).sum() / scale
        return float(value) if np.isfinite(value) else 1e10

    best = None
    for start in ([0.0, np.log(max(uT.mean(), 1.0)), 0.0, 0.0], [np.log(0.5), 0.0, np.log(0.5), np.log(2.0)]):
        found = minimize(loss, np.asarray(start), method="L-BFGS-B", bounds=[(-9.0, 9.0)] * 4)
        if best is None or found.fun < best.fun:
            best = found
    assert best is not None
    if not np.isfinite(best.fun):
        raise ValueError("BG/NBD: the likelihood could not be maximised on these histories")
    return BgNbd(*(float(v) for v in np.exp(best.x)))


def summary(active_days: np.ndarray, days_since_first: np.ndarray, days_since_last: np.ndarray):  # noqa: ANN201
    """(x, t_x, T) in weeks from a row's point-in-time columns: repeat days with the event after the first,
    weeks from the first to the last, weeks from the first to the date. NaN where there was no event."""
    seen = np.asarray(active_days, float) >= 1
    T = np.where(seen, np.asarray(days_since_first, float), np.nan) / WEEK  # noqa: N806
    # the last event's day: the date minus whole days since it (an event at 10:00 the day before is 1 day)
    gap = np.ceil(np.asarray(days_since_last, float) - 1e-9)
    t_x = np.where(seen, np.maximum(np.asarray(days_since_first, float) - gap, 0.0), np.nan) / WEEK
    x = np.where(seen, np.asarray(active_days, float) - 1, np.nan)
    return x, t_x, T


def btyd_columns(
    model: BgNbd, horizon_days: int, active_days: np.ndarray, days_since_first: np.ndarray,
    days_since_last: np.ndarray,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The fitted families of one event type per row: P(alive) and days with the event expected in the
    horizon (NaN for a customer without the event)."""
    x, t_x, T = summary(active_days, days_since_first, days_since_last)  # noqa: N806
    seen = ~np.isnan(x)
    p_alive, expected = np.full(len(x), np.nan), np.full(len(x), np.nan)
    if seen.any():
        p_alive[seen] = model.p_alive(x[seen], t_x[seen], T[seen])
        expected[seen] = model.expected(horizon_days / WEEK, x[seen], t_x[seen], T[seen])
    return {"btyd_p_alive": p_alive, "btyd_expected": expected}


INPUTS = ("active_days_total", "days_since_first", "days_since_last")


def with_fitted_columns(
    frame: pd.DataFrame, fitted: tuple[tuple[str, BgNbd], ...], horizon_days: int
) -> pd.DataFrame:
    """``frame`` with each fitted type's BG/NBD columns computed from its point-in-time summary columns.

    A model recomputes them from the summary at every prediction, so two models with their own
    parameters (champion and challenger) each score the same rows with their own; where the summary is
    absent (a feature record without it), the columns given are used as they are.
    """
    added = {}
    for event_type, model in fitted:
        s = slug(event_type)
        inputs = [column_name(k, s) for k in INPUTS]
        if not all(c in frame for c in inputs):
            continue
        values = btyd_columns(
            model, horizon_days, *(frame[c].to_numpy(dtype=float, na_value=np.nan) for c in inputs)
        )
        added |= {column_name(k, s): v for k, v in values.items()}
    return frame.assign(**added) if added else frame
