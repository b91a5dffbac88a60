"""One block of simulated customers, month by month: who churns, and how everyone behaves meanwhile.

`BlockSimulation` holds a block's accounts: their static profile, latent traits (engagement,
satisfaction, support needs, payment risk) and the state that moves each month (usage decline, seat
cuts, bad tickets, NPS answers, open failed invoices, subscriptions). Each month it first decides who
churns from last month's state (the planted drivers, and the CSM plays when they are on), then
generates the month's behaviour, step by step: usage, support, NPS, invoices, account changes.

The order of the random draws is the simulator's contract: the output of a seed is the same whatever
the code's shape (`tests/test_simulate.py` holds the hashes), so each step draws exactly what it drew
when it was one function, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnml.simulate.config import SimulationConfig
from churnml.simulate.plays import plan_month, plays_frame
from churnml.simulate.world import (
    BASE_LOGIT,
    BLOCK_SIZE,
    COUNTRIES,
    CSMS,
    DRIVERS,
    FEATURE,
    GROWTH,
    GROWTH_SHARE,
    INDUSTRIES,
    LAPSE_SHARE,
    LOGIN,
    NPS,
    ONB_DONE,
    ONB_STEP,
    PAY_FAIL,
    PAY_OK,
    PLAN,
    PRICE_PER_SEAT,
    SEAT,
    SEGMENT_P,
    TICKET,
)

__all__ = ["BlockSimulation", "BlockState", "Events", "month_starts"]


def month_starts(config: SimulationConfig) -> np.ndarray:
    """Day offsets (from config.start) of each month start, plus the end of the last month."""
    starts = pd.date_range(pd.Timestamp(config.start), periods=config.months + 1, freq="MS")
    return ((starts - pd.Timestamp(config.start)).days).to_numpy().astype(np.float64)


class Events:
    """Column buffers for one block's events."""

    def __init__(self) -> None:
        self.cust: list[np.ndarray] = []
        self.day: list[np.ndarray] = []
        self.kind: list[np.ndarray] = []
        self.value: list[np.ndarray] = []
        self.user: list[np.ndarray] = []

    def add(self, cust: np.ndarray, day: np.ndarray, kind: int, value: np.ndarray | None = None,
            user: np.ndarray | None = None) -> None:  # fmt: skip
        n = len(cust)
        if n == 0:
            return
        self.cust.append(cust.astype(np.int32))
        self.day.append(day.astype(np.float64))
        self.kind.append(np.full(n, kind, dtype=np.int8))
        self.value.append(np.full(n, np.nan, np.float32) if value is None else value.astype(np.float32))
        self.user.append(np.full(n, -1, np.int32) if user is None else user.astype(np.int32))


@dataclass
class BlockState:
    """What a simulated block ends with: profiles (today's plan, seats, MRR), events, subscriptions, truth."""

    signup: np.ndarray
    segment: np.ndarray
    plan: np.ndarray
    seats: np.ndarray
    mrr: np.ndarray
    owner: np.ndarray
    industry: np.ndarray
    country: np.ndarray
    events: Events
    churn_day: np.ndarray
    horizon_end: float
    sub_rows: list[tuple[np.ndarray, ...]]
    truth: list[pd.DataFrame]
    plays: list[pd.DataFrame] = field(default_factory=list)


def _spread(
    rng: np.random.Generator, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Repeat each customer index by its count and draw a uniform day in [lo, hi) for each copy."""
    idx = np.repeat(np.arange(len(counts)), counts)
    day = lo[idx] + rng.random(len(idx)) * (hi[idx] - lo[idx])
    return idx, day


@dataclass
class _Month:
    """One month of the block: its bounds, and the accounts active some time in it."""

    m: int
    ms: float
    me: float
    lo: np.ndarray  # every account's active span in the month: [lo, hi)
    hi: np.ndarray
    act: np.ndarray  # the accounts with a non-empty span
    d: np.ndarray | None = None  # their months of usage decline, once the usage step has moved it

    @property
    def lo_a(self) -> np.ndarray:
        return self.lo[self.act]

    @property
    def hi_a(self) -> np.ndarray:
        return self.hi[self.act]

    @property
    def exposure(self) -> np.ndarray:
        """The share of the month each active account was there."""
        return (self.hi_a - self.lo_a) / (self.me - self.ms)


class BlockSimulation:
    """Customers ``[block * BLOCK_SIZE, ...)`` of a simulation, with their own seeded random stream."""

    def __init__(self, config: SimulationConfig, block: int) -> None:
        self.config = config
        self.first = block * BLOCK_SIZE
        self.n = min(BLOCK_SIZE, config.customers - self.first)
        self.rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(block,)))
        self.bounds = month_starts(config)
        self.horizon_end = self.bounds[-1]
        self.events = Events()
        self._profile()
        self._traits()
        self._onboarding()
        self._dynamic_state()

    def run(self) -> BlockState:
        """Every month, then the subscriptions closed: churned at the churn day, the rest open."""
        for m in range(self.config.months):
            month = self._churn(m)
            if month is None:
                continue
            self._usage(month)
            self._support(month)
            self._nps(month)
            self._invoices(month)
            self._account_changes(month)
        return self._close()

    # ------------------------------------------------------------------ who the accounts are

    def _profile(self) -> None:
        """Segment, plan, seats, signup day, CSM, industry, country."""
        rng, n, config = self.rng, self.n, self.config
        segment = rng.choice(3, size=n, p=SEGMENT_P)
        plan = np.where(segment == 0, rng.choice([0, 1], n, p=[0.6, 0.4]),
                        np.where(segment == 1, rng.choice([1, 2], n, p=[0.5, 0.5]), rng.choice([2, 3], n, p=[0.4, 0.6])))  # fmt: skip
        seat_scale = np.array([3.0, 20.0, 90.0])[segment]
        seats = np.maximum(1, np.round(rng.lognormal(np.log(seat_scale), 0.5))).astype(np.int64)
        founding = rng.random(n) < config.founding_share
        signup = np.where(
            founding, rng.random(n) * 28.0, 28.0 + rng.random(n) * max(1.0, self.horizon_end - 90.0)
        )
        self.segment, self.plan, self.seats, self.signup = segment, plan, seats, signup
        self.owner = rng.integers(0, len(CSMS), n)
        self.industry = rng.integers(0, len(INDUSTRIES), n)
        self.country = rng.integers(0, len(COUNTRIES), n)

    def _traits(self) -> None:
        """Latent traits; with the covariate-drift scenario, a new plan whose accounts behave differently."""
        rng, n, segment = self.rng, self.n, self.segment
        self.base_engagement = rng.lognormal(0.0, 0.35, n)
        self.satisfaction = rng.normal(0.0, 1.0, n)
        self.onboarding_incomplete = rng.random(n) < np.array([0.3, 0.2, 0.12])[segment]
        self.friction_prone = rng.random(n) < 0.2
        self.support_rate = (
            rng.gamma(1.5, 0.25, n) * self.seats**0.25 * np.where(self.friction_prone, 1.8, 1.0)
        )
        self.payment_risk = np.where(rng.random(n) < 0.15, 0.22, 0.01) * np.array([1.5, 1.0, 0.5])[segment]
        if self.config.drift == "covariate":
            growth = (self.signup >= self.bounds[self.config.drift_month]) & (rng.random(n) < GROWTH_SHARE)
            self.plan[growth] = GROWTH
            self.base_engagement[growth] *= 2.0
            self.support_rate[growth] *= 0.5

    def _onboarding(self) -> None:
        """Steps in the first 3 weeks; incomplete accounts stop early and never finish."""
        rng, n, signup, incomplete = self.rng, self.n, self.signup, self.onboarding_incomplete
        steps_done = np.where(incomplete, rng.integers(0, 4, n), 5)
        for step in range(1, 6):
            who = np.flatnonzero(steps_done >= step)
            self.events.add(
                who, signup[who] + step * 3.0 + rng.random(len(who)) * 3.0, ONB_STEP, np.full(len(who), step)
            )
        done = np.flatnonzero(~incomplete)
        self.events.add(done, signup[done] + 18.0 + rng.random(len(done)) * 3.0, ONB_DONE)

    def _dynamic_state(self) -> None:
        n = self.n
        self.churn_day = np.full(n, np.inf)
        self.decline = np.zeros(n)
        self.seat_cut_month = np.full(n, -99)
        self.friction_month = np.full(n, -99)
        self.nps_score = np.full(n, np.nan)
        self.nps_month = np.full(n, -99)
        self.failed_open = np.zeros(n, dtype=bool)
        self.mrr = self.seats * PRICE_PER_SEAT[self.plan]
        self.sub_start = self.signup.copy()
        self.sub_rows: list[tuple[np.ndarray, ...]] = []
        self.truth: list[pd.DataFrame] = []
        self.billing_offset = self.signup % 28.0
        self.ids = np.array([f"C{self.first + i:07d}" for i in range(n)]) if self.config.plays else None
        self.plays: list[pd.DataFrame] = []

    def _close_rows(self, who: np.ndarray, at: np.ndarray) -> None:
        """End the subscription rows of ``who`` at ``at`` (a new row starts there)."""
        self.sub_rows.append(
            (
                who,
                self.sub_start[who].copy(),
                at,
                self.mrr[who].copy(),
                self.plan[who].copy(),
                self.seats[who].copy(),
            )
        )
        self.sub_start[who] = at

    # ------------------------------------------------------------------ each month

    def _drivers(self, m: int, ms: float) -> np.ndarray:
        """The six planted drivers of every account, from last month's state."""
        tenure_months = (ms - self.signup) / 30.4
        return np.column_stack([
            np.minimum(self.decline, 3.0),
            (m - self.seat_cut_month <= 2).astype(float),
            (m - self.friction_month <= 2).astype(float),
            ((self.nps_score <= 6) & (m - self.nps_month <= 6)).astype(float),
            self.failed_open.astype(float),
            (self.onboarding_incomplete & (tenure_months < 6)).astype(float),
        ])  # fmt: skip

    def _churn(self, m: int) -> _Month | None:
        """The month's churn decisions (after the plays, when on), lapses and truth; then the month's
        active accounts (None when there are none)."""
        rng, config, signup, churn_day = self.rng, self.config, self.signup, self.churn_day
        ms, me = self.bounds[m], self.bounds[m + 1]
        alive = (signup < me) & np.isinf(churn_day)
        at_risk = np.flatnonzero(alive & (signup < ms) & (self.sub_start <= ms))  # not inside a lapse gap
        drivers = self._drivers(m, ms)
        weights = config.weights(m)
        logit = BASE_LOGIT + drivers @ weights
        called = None
        if config.plays:  # the call list's treated accounts churn less this month
            period = f"{pd.Timestamp(config.start) + pd.DateOffset(months=m):%Y-%m}"
            called = plan_month(self.ids, period, at_risk, drivers, weights, logit, config.call_share,
                                config.holdout_share, list(DRIVERS))  # fmt: skip
            logit[called.local[~called.control]] = called.logit_treated[~called.control]
        uniform = rng.random(len(at_risk))
        fire = at_risk[uniform < 1.0 / (1.0 + np.exp(-logit[at_risk]))]
        if called is not None:
            month_plays = plays_frame(called, uniform[np.searchsorted(at_risk, called.local)], LAPSE_SHARE)
            self.plays.append(month_plays.assign(month=ms))
        lapse = fire[rng.random(len(fire)) < LAPSE_SHARE]
        churners = np.setdiff1d(fire, lapse)
        when = ms + rng.random(len(fire)) * (me - ms) * 0.9
        when_of = dict(zip(fire.tolist(), when.tolist(), strict=True))
        if len(lapse):  # subscription lapses and restarts within the grace period
            at = np.array([when_of[i] for i in lapse])
            self._close_rows(lapse, at)
            self.sub_start[lapse] = at + 3.0 + rng.random(len(lapse)) * 17.0
            self.failed_open[lapse] = False
        if len(churners):
            at = np.array([when_of[i] for i in churners])
            churn_day[churners] = at
            self.truth.append(_truth(churners, at, drivers, weights, logit))
        lo = np.maximum(ms, signup)
        hi = np.minimum(me, churn_day)
        act = np.flatnonzero(alive & (hi > lo))
        return _Month(m, ms, me, lo, hi, act) if len(act) else None

    def _usage(self, mo: _Month) -> None:
        """Engagement: declining accounts and unfinished onboardings use the product less."""
        rng, act, incomplete = self.rng, mo.act, self.onboarding_incomplete
        lo_a, hi_a = mo.lo_a, mo.hi_a
        start_decline = rng.random(len(act)) < np.where(incomplete[act], 0.05, 0.025)
        grow = rng.random(len(act)) < 0.7
        recover = rng.random(len(act)) < 0.08
        d = self.decline[act]
        d = np.where(d > 0, np.where(recover, 0.0, d + grow), start_decline.astype(float))
        self.decline[act] = mo.d = d
        mult = self.base_engagement[act] * 0.6**d * np.where(incomplete[act], 0.6, 1.0)
        users = rng.binomial(self.seats[act], np.clip(0.35 * mult, 0.02, 0.95))
        login_n = rng.poisson(mo.exposure * 10.0 * np.maximum(users, 0.5) ** 0.6 * np.minimum(mult, 2.5))
        idx, day = _spread(rng, login_n, lo_a, hi_a)
        self.events.add(
            act[idx], day, LOGIN, user=1 + (rng.random(len(idx)) * np.maximum(users[idx], 1)).astype(np.int64)
        )
        feat_n = rng.poisson(login_n * 0.5)
        idx, day = _spread(rng, feat_n, lo_a, hi_a)
        self.events.add(act[idx], day, FEATURE, rng.integers(1, 12, len(idx)),
                        user=1 + (rng.random(len(idx)) * np.maximum(users[idx], 1)).astype(np.int64))  # fmt: skip

    def _support(self, mo: _Month) -> None:
        """More tickets when declining; friction-prone accounts rate them badly."""
        rng, act, d = self.rng, mo.act, mo.d
        ticket_n = rng.poisson(mo.exposure * self.support_rate[act] * (1.0 + 0.6 * np.minimum(d, 3)))
        idx, day = _spread(rng, ticket_n, mo.lo_a, mo.hi_a)
        bad = rng.random(len(idx)) < np.where(self.friction_prone[act[idx]], 0.55, 0.08) + 0.05 * np.minimum(
            d[idx], 3
        )
        csat = np.where(bad, rng.integers(1, 3, len(idx)), rng.integers(3, 6, len(idx)))
        self.events.add(act[idx], day, TICKET, csat)
        self.friction_month[np.unique(act[idx][bad])] = mo.m

    def _nps(self, mo: _Month) -> None:
        """A survey every 3rd month of tenure, ~45% answer."""
        rng, act, m, lo, hi = self.rng, mo.act, mo.m, mo.lo, mo.hi
        surveyed = act[
            (((mo.ms - self.signup[act]) // 30.4).astype(int) % 3 == 2) & (rng.random(len(act)) < 0.45)
        ]
        if len(surveyed):
            mean = (8.0 + 1.2 * self.satisfaction[surveyed] - 1.3 * np.minimum(self.decline[surveyed], 3)
                    - 2.0 * (m - self.friction_month[surveyed] <= 1) - 1.5 * self.failed_open[surveyed])  # fmt: skip
            score = np.clip(np.round(rng.normal(mean, 1.2)), 0, 10)
            self.nps_score[surveyed], self.nps_month[surveyed] = score, m
            self.events.add(
                surveyed, lo[surveyed] + rng.random(len(surveyed)) * (hi[surveyed] - lo[surveyed]), NPS, score
            )

    def _invoices(self, mo: _Month) -> None:
        """One invoice per month on the billing day; some fail, half of those are recovered."""
        rng, act, mrr = self.rng, mo.act, self.mrr
        bill_day = mo.ms + self.billing_offset[act]
        billed = (bill_day >= mo.lo_a) & (bill_day < mo.hi_a)
        b = act[billed]
        fail = rng.random(len(b)) < self.payment_risk[b]
        recovered = fail & (rng.random(len(b)) < 0.5)
        self.events.add(b[fail], bill_day[billed][fail], PAY_FAIL, mrr[b][fail])
        ok_day = np.where(recovered, bill_day[billed] + 2.0 + rng.random(len(b)) * 5.0, bill_day[billed])
        paid = ~fail | recovered
        self.events.add(b[paid], ok_day[paid], PAY_OK, mrr[b][paid])
        self.failed_open[act] = False
        self.failed_open[b[fail & ~recovered]] = True

    def _account_changes(self, mo: _Month) -> None:
        """Contraction when declining, expansion when healthy, downgrades when unhappy."""
        rng, act, d, m, seats, plan = self.rng, mo.act, mo.d, mo.m, self.seats, self.plan
        lo_a, hi_a = mo.lo_a, mo.hi_a
        u = rng.random(len(act))
        shrink = (u < 0.015 + 0.12 * (d > 0)) & (seats[act] > 1)
        expand = ~shrink & (u > 0.96) & (d == 0)
        in_gap = self.sub_start[act] > lo_a  # lapsed, not yet resubscribed: no account changes
        shrink &= ~in_gap
        expand &= ~in_gap
        unhappy = (d > 0) | ((self.nps_score[act] <= 6) & (m - self.nps_month[act] <= 3))
        downgrade = ~shrink & ~expand & ~in_gap & unhappy & (rng.random(len(act)) < 0.04) & (plan[act] > 0)
        downgrade &= plan[act] != GROWTH  # the growth plan has no plan below it
        change_day = lo_a + rng.random(len(act)) * (hi_a - lo_a)
        changed = shrink | expand | downgrade
        if not changed.any():
            return
        self._close_rows(act[changed], change_day[changed])
        delta = np.zeros(len(act), dtype=np.int64)
        delta[shrink] = -np.maximum(1, np.round(seats[act][shrink] * rng.uniform(0.1, 0.35, shrink.sum())))
        delta[shrink] = np.maximum(delta[shrink], 1 - seats[act][shrink])
        delta[expand] = np.maximum(1, np.round(seats[act][expand] * rng.uniform(0.05, 0.2, expand.sum())))
        old_mrr = self.mrr[act].copy()
        seats[act] += delta
        plan[act[downgrade]] -= 1
        self.mrr[act] = seats[act] * PRICE_PER_SEAT[plan[act]]
        self.events.add(act[shrink | expand], change_day[shrink | expand], SEAT, delta[shrink | expand])
        self.events.add(act[downgrade], change_day[downgrade], PLAN, (self.mrr[act] - old_mrr)[downgrade])
        self.seat_cut_month[act[shrink]] = m

    def _close(self) -> BlockState:
        churn_day = self.churn_day
        churned = np.flatnonzero(np.isfinite(churn_day))
        self._close_rows(churned, churn_day[churned])
        still = np.flatnonzero(~np.isfinite(churn_day))
        self.sub_rows.append(
            (still, self.sub_start[still].copy(), np.full(len(still), np.nan), self.mrr[still].copy(),
             self.plan[still].copy(), self.seats[still].copy())
        )  # fmt: skip
        return BlockState(
            signup=self.signup, segment=self.segment, plan=self.plan, seats=self.seats, mrr=self.mrr,
            owner=self.owner, industry=self.industry, country=self.country, events=self.events,
            churn_day=churn_day, horizon_end=self.horizon_end, sub_rows=self.sub_rows, truth=self.truth,
            plays=self.plays,
        )  # fmt: skip


def _truth(
    churners: np.ndarray, at: np.ndarray, drivers: np.ndarray, weights: np.ndarray, logit: np.ndarray
) -> pd.DataFrame:
    """The ground truth of the month's churners: each driver's value and contribution, the primary one."""
    contrib = drivers[churners] * weights
    frame = pd.DataFrame(drivers[churners], columns=[f"{k}_value" for k in DRIVERS])
    for j, k in enumerate(DRIVERS):
        frame[f"{k}_contribution"] = contrib[:, j]
    frame.insert(0, "local", churners)
    frame.insert(1, "churn_day", at)
    frame["primary_driver"] = np.where(
        contrib.max(axis=1) > 0, np.array(list(DRIVERS))[contrib.argmax(axis=1)], "none"
    )
    frame["churn_logit"] = logit[churners]
    return frame
