"""A simulated SaaS business whose churn is driven by a known latent process.

Accounts have a segment, plan, seats and MRR, several users, an onboarding, support tickets with CSAT,
quarterly NPS surveys, monthly invoices that sometimes fail, seat changes and downgrades. Each month an
active account churns with probability ``sigmoid(BASE_LOGIT + sum(driver_weight * driver_value))`` over
six planted drivers (see :data:`DRIVERS`); the drivers also shape behaviour (a declining account logs in
less, opens more tickets, contracts seats). ``ground_truth.parquet`` records, for every churner, the
value and contribution of each driver at the moment it churned, so explanations can be checked against
causes.

Deterministic per seed: customers are simulated in fixed blocks, each with its own seeded stream, so
the output does not depend on how many worker processes run. Blocks are streamed to Parquet, so
memory stays bounded whatever the number of customers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from churnml.simulate.config import SimulationConfig, SimulationSummary
from churnml.simulate.plays import plan_month, plays_frame, plays_frame_empty
from churnml.simulate.spec import simulation_spec
from churnml.simulate.world import (
    BASE_LOGIT,
    BLOCK_SIZE,
    COUNTRIES,
    CSMS,
    DAY_US,
    DRIVERS,
    EVENT_TYPES,
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
    PLANS,
    PRICE_PER_SEAT,
    SEAT,
    SEGMENT_P,
    SEGMENTS,
    TICKET,
    account_names,
)

__all__ = [
    "SimulationConfig",
    "SimulationSummary",
    "DRIVERS",
    "simulate",
    "simulate_block",
    "simulation_spec",
]


def _month_starts(config: SimulationConfig) -> np.ndarray:
    """Day offsets (from config.start) of each month start, plus the end of the last month."""
    starts = pd.date_range(pd.Timestamp(config.start), periods=config.months + 1, freq="MS")
    return ((starts - pd.Timestamp(config.start)).days).to_numpy().astype(np.float64)


class _Events:
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


def _spread(
    rng: np.random.Generator, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Repeat each customer index by its count and draw a uniform day in [lo, hi) for each copy."""
    idx = np.repeat(np.arange(len(counts)), counts)
    day = lo[idx] + rng.random(len(idx)) * (hi[idx] - lo[idx])
    return idx, day


def simulate_block(config: SimulationConfig, block: int) -> dict[str, pa.Table]:
    """Simulate customers ``[block * BLOCK_SIZE, ...)``: customers, events, subscriptions, ground truth."""
    first = block * BLOCK_SIZE
    n = min(BLOCK_SIZE, config.customers - first)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(block,)))
    bounds = _month_starts(config)
    horizon_end = bounds[-1]

    # ---- static profile
    segment = rng.choice(3, size=n, p=SEGMENT_P)
    plan = np.where(segment == 0, rng.choice([0, 1], n, p=[0.6, 0.4]),
                    np.where(segment == 1, rng.choice([1, 2], n, p=[0.5, 0.5]), rng.choice([2, 3], n, p=[0.4, 0.6])))  # fmt: skip
    seat_scale = np.array([3.0, 20.0, 90.0])[segment]
    seats = np.maximum(1, np.round(rng.lognormal(np.log(seat_scale), 0.5))).astype(np.int64)
    founding = rng.random(n) < config.founding_share
    signup = np.where(founding, rng.random(n) * 28.0, 28.0 + rng.random(n) * max(1.0, horizon_end - 90.0))
    owner = rng.integers(0, len(CSMS), n)
    industry = rng.integers(0, len(INDUSTRIES), n)
    country = rng.integers(0, len(COUNTRIES), n)

    # ---- latent traits
    base_engagement = rng.lognormal(0.0, 0.35, n)
    satisfaction = rng.normal(0.0, 1.0, n)
    onboarding_incomplete = rng.random(n) < np.array([0.3, 0.2, 0.12])[segment]
    friction_prone = rng.random(n) < 0.2
    support_rate = rng.gamma(1.5, 0.25, n) * seats**0.25 * np.where(friction_prone, 1.8, 1.0)
    payment_risk = np.where(rng.random(n) < 0.15, 0.22, 0.01) * np.array([1.5, 1.0, 0.5])[segment]
    if (
        config.drift == "covariate"
    ):  # a new plan from the drift month on, whose accounts use the product differently
        growth = (signup >= bounds[config.drift_month]) & (rng.random(n) < GROWTH_SHARE)
        plan[growth] = GROWTH
        base_engagement[growth] *= 2.0
        support_rate[growth] *= 0.5

    events = _Events()
    # ---- onboarding: steps in the first 3 weeks; incomplete accounts stop early and never finish
    steps_done = np.where(onboarding_incomplete, rng.integers(0, 4, n), 5)
    for step in range(1, 6):
        who = np.flatnonzero(steps_done >= step)
        events.add(
            who, signup[who] + step * 3.0 + rng.random(len(who)) * 3.0, ONB_STEP, np.full(len(who), step)
        )
    done = np.flatnonzero(~onboarding_incomplete)
    events.add(done, signup[done] + 18.0 + rng.random(len(done)) * 3.0, ONB_DONE)

    # ---- dynamic state
    churn_day = np.full(n, np.inf)
    decline = np.zeros(n)
    seat_cut_month = np.full(n, -99)
    friction_month = np.full(n, -99)
    nps_score = np.full(n, np.nan)
    nps_month = np.full(n, -99)
    failed_open = np.zeros(n, dtype=bool)
    mrr = seats * PRICE_PER_SEAT[plan]
    sub_start = signup.copy()
    sub_rows: list[tuple[np.ndarray, ...]] = []
    truth: list[pd.DataFrame] = []
    billing_offset = signup % 28.0
    ids = np.array([f"C{first + i:07d}" for i in range(n)]) if config.plays else None
    plays: list[pd.DataFrame] = []

    def close_rows(who: np.ndarray, at: np.ndarray) -> None:
        sub_rows.append(
            (who, sub_start[who].copy(), at, mrr[who].copy(), plan[who].copy(), seats[who].copy())
        )
        sub_start[who] = at

    for m in range(config.months):
        ms, me = bounds[m], bounds[m + 1]
        alive = (signup < me) & np.isinf(churn_day)

        # churn decision for accounts that started before this month, from last month's state
        tenure_months = (ms - signup) / 30.4
        at_risk = np.flatnonzero(alive & (signup < ms) & (sub_start <= ms))  # not inside a lapse gap
        drivers = np.column_stack([
            np.minimum(decline, 3.0),
            (m - seat_cut_month <= 2).astype(float),
            (m - friction_month <= 2).astype(float),
            ((nps_score <= 6) & (m - nps_month <= 6)).astype(float),
            failed_open.astype(float),
            (onboarding_incomplete & (tenure_months < 6)).astype(float),
        ])  # fmt: skip
        weights = config.weights(m)
        logit = BASE_LOGIT + drivers @ weights
        called = None
        if config.plays:  # the call list's treated accounts churn less this month
            period = f"{pd.Timestamp(config.start) + pd.DateOffset(months=m):%Y-%m}"
            called = plan_month(ids, period, at_risk, drivers, weights, logit, config.call_share,
                                config.holdout_share, list(DRIVERS))  # fmt: skip
            logit[called.local[~called.control]] = called.logit_treated[~called.control]
        uniform = rng.random(len(at_risk))
        fire = at_risk[uniform < 1.0 / (1.0 + np.exp(-logit[at_risk]))]
        if called is not None:
            month_plays = plays_frame(called, uniform[np.searchsorted(at_risk, called.local)], LAPSE_SHARE)
            plays.append(month_plays.assign(month=ms))
        lapse = fire[rng.random(len(fire)) < LAPSE_SHARE]
        churners = np.setdiff1d(fire, lapse)
        when = ms + rng.random(len(fire)) * (me - ms) * 0.9
        when_of = dict(zip(fire.tolist(), when.tolist(), strict=True))
        if len(lapse):  # subscription lapses and restarts within the grace period
            at = np.array([when_of[i] for i in lapse])
            close_rows(lapse, at)
            sub_start[lapse] = at + 3.0 + rng.random(len(lapse)) * 17.0
            failed_open[lapse] = False
        if len(churners):
            at = np.array([when_of[i] for i in churners])
            churn_day[churners] = at
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
            truth.append(frame)

        lo = np.maximum(ms, signup)
        hi = np.minimum(me, churn_day)
        act = np.flatnonzero(alive & (hi > lo))
        if len(act) == 0:
            continue
        lo_a, hi_a = lo[act], hi[act]
        exposure = (hi_a - lo_a) / (me - ms)

        # engagement: declining accounts and unfinished onboardings use the product less
        start_decline = rng.random(len(act)) < np.where(onboarding_incomplete[act], 0.05, 0.025)
        grow = rng.random(len(act)) < 0.7
        recover = rng.random(len(act)) < 0.08
        d = decline[act]
        d = np.where(d > 0, np.where(recover, 0.0, d + grow), start_decline.astype(float))
        decline[act] = d
        mult = base_engagement[act] * 0.6**d * np.where(onboarding_incomplete[act], 0.6, 1.0)
        users = rng.binomial(seats[act], np.clip(0.35 * mult, 0.02, 0.95))
        login_n = rng.poisson(exposure * 10.0 * np.maximum(users, 0.5) ** 0.6 * np.minimum(mult, 2.5))
        idx, day = _spread(rng, login_n, lo_a, hi_a)
        events.add(
            act[idx], day, LOGIN, user=1 + (rng.random(len(idx)) * np.maximum(users[idx], 1)).astype(np.int64)
        )
        feat_n = rng.poisson(login_n * 0.5)
        idx, day = _spread(rng, feat_n, lo_a, hi_a)
        events.add(act[idx], day, FEATURE, rng.integers(1, 12, len(idx)),
                   user=1 + (rng.random(len(idx)) * np.maximum(users[idx], 1)).astype(np.int64))  # fmt: skip

        # support: more tickets when declining; friction-prone accounts rate them badly
        ticket_n = rng.poisson(exposure * support_rate[act] * (1.0 + 0.6 * np.minimum(d, 3)))
        idx, day = _spread(rng, ticket_n, lo_a, hi_a)
        bad = rng.random(len(idx)) < np.where(friction_prone[act[idx]], 0.55, 0.08) + 0.05 * np.minimum(
            d[idx], 3
        )
        csat = np.where(bad, rng.integers(1, 3, len(idx)), rng.integers(3, 6, len(idx)))
        events.add(act[idx], day, TICKET, csat)
        friction_month[np.unique(act[idx][bad])] = m

        # NPS survey every 3rd month of tenure, ~45% answer
        surveyed = act[(((ms - signup[act]) // 30.4).astype(int) % 3 == 2) & (rng.random(len(act)) < 0.45)]
        if len(surveyed):
            mean = (8.0 + 1.2 * satisfaction[surveyed] - 1.3 * np.minimum(decline[surveyed], 3)
                    - 2.0 * (m - friction_month[surveyed] <= 1) - 1.5 * failed_open[surveyed])  # fmt: skip
            score = np.clip(np.round(rng.normal(mean, 1.2)), 0, 10)
            nps_score[surveyed], nps_month[surveyed] = score, m
            events.add(
                surveyed, lo[surveyed] + rng.random(len(surveyed)) * (hi[surveyed] - lo[surveyed]), NPS, score
            )

        # invoices: one per month on the billing day; some fail, half of those are recovered
        bill_day = ms + billing_offset[act]
        billed = (bill_day >= lo_a) & (bill_day < hi_a)
        b = act[billed]
        fail = rng.random(len(b)) < payment_risk[b]
        recovered = fail & (rng.random(len(b)) < 0.5)
        events.add(b[fail], bill_day[billed][fail], PAY_FAIL, mrr[b][fail])
        ok_day = np.where(recovered, bill_day[billed] + 2.0 + rng.random(len(b)) * 5.0, bill_day[billed])
        paid = ~fail | recovered
        events.add(b[paid], ok_day[paid], PAY_OK, mrr[b][paid])
        failed_open[act] = False
        failed_open[b[fail & ~recovered]] = True

        # account changes: contraction when declining, expansion when healthy, downgrades when unhappy
        u = rng.random(len(act))
        shrink = (u < 0.015 + 0.12 * (d > 0)) & (seats[act] > 1)
        expand = ~shrink & (u > 0.96) & (d == 0)
        in_gap = sub_start[act] > lo_a  # lapsed, not yet resubscribed: no account changes
        shrink &= ~in_gap
        expand &= ~in_gap
        unhappy = (d > 0) | ((nps_score[act] <= 6) & (m - nps_month[act] <= 3))
        downgrade = ~shrink & ~expand & ~in_gap & unhappy & (rng.random(len(act)) < 0.04) & (plan[act] > 0)
        downgrade &= plan[act] != GROWTH  # the growth plan has no plan below it
        change_day = lo_a + rng.random(len(act)) * (hi_a - lo_a)
        changed = shrink | expand | downgrade
        if changed.any():
            who = act[changed]
            close_rows(who, change_day[changed])
            delta = np.zeros(len(act), dtype=np.int64)
            delta[shrink] = -np.maximum(
                1, np.round(seats[act][shrink] * rng.uniform(0.1, 0.35, shrink.sum()))
            )
            delta[shrink] = np.maximum(delta[shrink], 1 - seats[act][shrink])
            delta[expand] = np.maximum(1, np.round(seats[act][expand] * rng.uniform(0.05, 0.2, expand.sum())))
            old_mrr = mrr[act].copy()
            seats[act] += delta
            plan[act[downgrade]] -= 1
            mrr[act] = seats[act] * PRICE_PER_SEAT[plan[act]]
            events.add(act[shrink | expand], change_day[shrink | expand], SEAT, delta[shrink | expand])
            events.add(act[downgrade], change_day[downgrade], PLAN, (mrr[act] - old_mrr)[downgrade])
            seat_cut_month[act[shrink]] = m

    # close subscription rows: churned at churn day; the rest open
    churned = np.flatnonzero(np.isfinite(churn_day))
    close_rows(churned, churn_day[churned])
    still = np.flatnonzero(~np.isfinite(churn_day))
    sub_rows.append(
        (still, sub_start[still].copy(), np.full(len(still), np.nan), mrr[still].copy(), plan[still].copy(),
         seats[still].copy())
    )  # fmt: skip

    state = _BlockState(
        signup=signup, segment=segment, plan=plan, seats=seats, mrr=mrr, owner=owner, industry=industry,
        country=country, events=events, churn_day=churn_day, horizon_end=horizon_end, sub_rows=sub_rows, truth=truth,
        plays=plays,
    )  # fmt: skip
    return _block_tables(config, first, n, state)


def _to_ts(start_us: int, days: np.ndarray) -> pa.Array:
    mask = ~np.isfinite(days)
    us = start_us + np.round(np.where(mask, 0.0, days) * DAY_US).astype(np.int64)
    return pa.array(us, type=pa.timestamp("us"), mask=mask)


@dataclass
class _BlockState:
    """What a simulated block ends with: profiles (today's plan, seats, MRR), events, subscriptions, truth."""

    signup: np.ndarray
    segment: np.ndarray
    plan: np.ndarray
    seats: np.ndarray
    mrr: np.ndarray
    owner: np.ndarray
    industry: np.ndarray
    country: np.ndarray
    events: _Events
    churn_day: np.ndarray
    horizon_end: float
    sub_rows: list[tuple[np.ndarray, ...]]
    truth: list[pd.DataFrame]
    plays: list[pd.DataFrame] = field(default_factory=list)


def _block_tables(config: SimulationConfig, first: int, n: int, s: _BlockState) -> dict[str, pa.Table]:
    start_us = int(pd.Timestamp(config.start).value // 1000)
    ids = np.array([f"C{first + i:07d}" for i in range(n)])
    customers = pa.table({
        "customer_id": ids,
        "name": account_names(np.arange(first, first + n)),
        "signup_date": _to_ts(start_us, np.floor(s.signup)),
        "segment": SEGMENTS[s.segment],
        "plan": PLANS[s.plan],
        "seats": s.seats.astype(np.int32),
        "mrr": s.mrr.astype(np.float64),
        "csm_owner": CSMS[s.owner],
        "industry": INDUSTRIES[s.industry],
        "country": COUNTRIES[s.country],
    })  # fmt: skip

    ev = s.events
    cust = np.concatenate(ev.cust)
    day = np.concatenate(ev.day)
    # drop events after churn (onboarding events of accounts that churned very early)
    keep = day < np.minimum(s.churn_day[cust], s.horizon_end)
    order = np.lexsort((day[keep], cust[keep]))
    cust, day = cust[keep][order], day[keep][order]
    kind = np.concatenate(ev.kind)[keep][order]
    value = np.concatenate(ev.value)[keep][order]
    user = np.concatenate(ev.user)[keep][order]
    events = pa.table({
        "customer_id": pa.DictionaryArray.from_arrays(pa.array(cust, pa.int32()), pa.array(ids)),
        "timestamp": _to_ts(start_us, day),
        "event_type": pa.DictionaryArray.from_arrays(pa.array(kind.astype(np.int32)), pa.array(EVENT_TYPES)),
        "value": pa.array(value.astype(np.float64), mask=np.isnan(value)),
        "user_id": pa.array(user, mask=user < 0),
    })  # fmt: skip

    rows = s.sub_rows
    who = np.concatenate([r[0] for r in rows]).astype(np.int64)
    start = np.concatenate([r[1] for r in rows])
    end = np.concatenate([r[2] for r in rows])
    real = ~(end <= start)  # zero-length rows from two changes on one day
    order = np.lexsort((start[real], who[real]))
    subs = pa.table({
        "customer_id": ids[who[real][order]],
        "start_date": _to_ts(start_us, start[real][order]),
        "end_date": _to_ts(start_us, end[real][order]),
        "mrr": np.concatenate([r[3] for r in rows])[real][order].astype(np.float64),
        "plan": PLANS[np.concatenate([r[4] for r in rows])[real][order]],
        "seats": np.concatenate([r[5] for r in rows])[real][order].astype(np.int32),
    })  # fmt: skip

    columns = ["local", "churn_day", *(f"{k}_{p}" for p in ("value", "contribution") for k in DRIVERS)]
    empty = pd.DataFrame({c: pd.Series(dtype="int64" if c == "local" else "float64") for c in columns})
    empty["primary_driver"], empty["churn_logit"] = pd.Series(dtype="str"), pd.Series(dtype="float64")
    truth = pd.concat([empty, *s.truth], ignore_index=True)[list(empty.columns)]
    truth.insert(0, "customer_id", ids[truth.pop("local").to_numpy(dtype=np.int64)])
    truth.insert(
        1, "churn_date", _to_ts(start_us, truth.pop("churn_day").to_numpy(dtype=np.float64)).to_pandas()
    )
    tables = {
        "customers": customers,
        "events": events,
        "subscriptions": subs,
        "ground_truth": pa.Table.from_pandas(truth, preserve_index=False),
    }
    if config.plays:
        tables["plays"] = _plays_table(s.plays, ids, start_us)
    return tables


def _plays_table(months: list[pd.DataFrame], ids: np.ndarray, start_us: int) -> pa.Table:
    """The plays' ground truth: one row per account on a month's call list, both arms' probabilities."""
    frame = pd.concat(months, ignore_index=True) if months else plays_frame_empty()
    frame.insert(0, "customer_id", ids[frame.pop("local").to_numpy(dtype=np.int64)])
    frame.insert(1, "month", _to_ts(start_us, frame.pop("month").to_numpy(dtype=np.float64)).to_pandas())
    return pa.Table.from_pandas(frame, preserve_index=False)


def _blocks(config: SimulationConfig, workers: int) -> Iterator[dict[str, pa.Table]]:
    n_blocks = -(-config.customers // BLOCK_SIZE)
    if workers <= 1 or n_blocks == 1:
        for b in range(n_blocks):
            yield simulate_block(config, b)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = []
        for b in range(n_blocks):
            pending.append(pool.submit(simulate_block, config, b))
            if len(pending) > workers:  # bounded: at most workers+1 blocks in memory
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def simulate(
    config: SimulationConfig,
    out_dir: Path,
    workers: int | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> SimulationSummary:
    """Write customers, events, subscriptions and ground truth Parquet files plus ``spec.yaml`` to out_dir.

    Files are written under temporary names and renamed at the end, so a failed run never leaves a
    half-written dataset in place of a good one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    names = ["customers", "events", "subscriptions", "ground_truth", *(["plays"] if config.plays else [])]
    tmp = {k: out_dir / f".{k}.parquet.tmp" for k in names}
    writers: dict[str, pq.ParquetWriter] = {}
    counts = dict.fromkeys(names, 0)
    n_blocks = -(-config.customers // BLOCK_SIZE)
    try:
        for i, tables in enumerate(_blocks(config, workers)):
            for k in names:
                table = tables[k]
                if k not in writers:
                    writers[k] = pq.ParquetWriter(tmp[k], table.schema, compression="zstd")
                writers[k].write_table(table.cast(writers[k].schema), row_group_size=1_000_000)
                counts[k] += table.num_rows
            if on_block:
                on_block(i + 1, n_blocks)
    except BaseException:
        for w in writers.values():
            w.close()
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    for w in writers.values():
        w.close()
    files = {}
    for k in names:
        files[k] = out_dir / f"{k}.parquet"
        tmp[k].replace(files[k])
    spec_path = out_dir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(simulation_spec(config), sort_keys=False), encoding="utf-8")
    files["spec"] = spec_path
    return SimulationSummary(out_dir, counts["customers"], counts["events"], counts["subscriptions"],
                             counts["ground_truth"], files)  # fmt: skip
