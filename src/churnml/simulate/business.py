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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from churnml.simulate.block import BlockSimulation, BlockState
from churnml.simulate.config import SimulationConfig, SimulationSummary
from churnml.simulate.plays import plays_frame_empty
from churnml.simulate.spec import simulation_spec
from churnml.simulate.world import (
    BLOCK_SIZE,
    COUNTRIES,
    CSMS,
    DAY_US,
    DRIVERS,
    EVENT_TYPES,
    INDUSTRIES,
    PLANS,
    SEGMENTS,
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


def _to_ts(start_us: int, days: np.ndarray) -> pa.Array:
    mask = ~np.isfinite(days)
    us = start_us + np.round(np.where(mask, 0.0, days) * DAY_US).astype(np.int64)
    return pa.array(us, type=pa.timestamp("us"), mask=mask)


def simulate_block(config: SimulationConfig, block: int) -> dict[str, pa.Table]:
    """Simulate customers ``[block * BLOCK_SIZE, ...)``: customers, events, subscriptions, ground truth."""
    first = block * BLOCK_SIZE
    return _block_tables(
        config, first, min(BLOCK_SIZE, config.customers - first), BlockSimulation(config, block).run()
    )


def _block_tables(config: SimulationConfig, first: int, n: int, s: BlockState) -> dict[str, pa.Table]:
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
    tables = {
        "customers": customers,
        "events": _events_table(s, ids, start_us),
        "subscriptions": _subscriptions_table(s, ids, start_us),
        "ground_truth": _truth_table(s, ids, start_us),
    }
    if config.plays:
        tables["plays"] = _plays_table(s.plays, ids, start_us)
    return tables


def _events_table(s: BlockState, ids: np.ndarray, start_us: int) -> pa.Table:
    """The block's events in customer and time order, without those after a churn."""
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
    return events


def _subscriptions_table(s: BlockState, ids: np.ndarray, start_us: int) -> pa.Table:
    """One row per subscription span (zero-length spans, from two changes on one day, left out)."""
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
    return subs


def _truth_table(s: BlockState, ids: np.ndarray, start_us: int) -> pa.Table:
    """Every churner's drivers at its churn: values, contributions, the primary one (typed when empty)."""
    columns = ["local", "churn_day", *(f"{k}_{p}" for p in ("value", "contribution") for k in DRIVERS)]
    empty = pd.DataFrame({c: pd.Series(dtype="int64" if c == "local" else "float64") for c in columns})
    empty["primary_driver"], empty["churn_logit"] = pd.Series(dtype="str"), pd.Series(dtype="float64")
    truth = pd.concat([empty, *s.truth], ignore_index=True)[list(empty.columns)]
    truth.insert(0, "customer_id", ids[truth.pop("local").to_numpy(dtype=np.int64)])
    truth.insert(
        1, "churn_date", _to_ts(start_us, truth.pop("churn_day").to_numpy(dtype=np.float64)).to_pandas()
    )
    return pa.Table.from_pandas(truth, preserve_index=False)


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
