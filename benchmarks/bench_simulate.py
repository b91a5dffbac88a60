"""Simulator throughput at scale: `python benchmarks/bench_simulate.py [--customers N] [--months M]`.

Target (issue 2): 100k customers x 24 months in under 3 minutes on 2 cores, in bounded memory.
Baseline measured in the same run: writing the same number of random event rows straight to Parquet
with pyarrow (the I/O floor any simulator pays), so the ratio is comparable across noisy machines.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from churnml.simulate import SimulationConfig, simulate


def _peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _write_floor(rows: int, path: Path) -> float:
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    with pq.ParquetWriter(
        path,
        pa.schema(
            [
                ("c", pa.int32()),
                ("t", pa.timestamp("us")),
                ("k", pa.int8()),
                ("v", pa.float64()),
                ("u", pa.int32()),
            ]
        ),
        compression="zstd",
    ) as w:
        step = 2_000_000
        for lo in range(0, rows, step):
            n = min(step, rows - lo)
            w.write_table(
                pa.table(
                    {
                        "c": np.sort(rng.integers(0, 100_000, n)).astype(np.int32),
                        "t": pa.array(rng.integers(0, 2**45, n), pa.timestamp("us")),
                        "k": rng.integers(0, 10, n).astype(np.int8),
                        "v": rng.random(n),
                        "u": rng.integers(0, 50, n).astype(np.int32),
                    }
                )
            )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the headline figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim"
        began = time.perf_counter()
        summary = simulate(
            SimulationConfig(customers=args.customers, months=args.months, seed=0), out, workers=args.workers
        )
        elapsed = time.perf_counter() - began
        own, children = _peak_rss_mb()
        size = sum(p.stat().st_size for p in out.glob("*.parquet")) / 2**20
        floor = _write_floor(summary.events, Path(tmp) / "floor.parquet")
    print(f"simulate {args.customers:,} customers x {args.months} months, {args.workers} workers")
    print(f"  events          {summary.events:,}  ({size:,.0f} MiB Parquet)")
    print(f"  wall time       {elapsed:,.1f} s  (target < 180 s)")
    print(f"  events/s        {summary.events / elapsed:,.0f}")
    print(f"  peak RSS        main {own:,.0f} MiB, largest worker {children:,.0f} MiB")
    print(f"  baseline        pyarrow write of {summary.events:,} random rows: {floor:,.1f} s")
    print(f"  ratio           simulate / write-floor = {elapsed / floor:.2f}x")
    if args.json:
        figures = {"events": summary.events, "seconds": elapsed, "events_per_second": summary.events / elapsed,
                   "peak_rss_mb": max(own, children), "ratio_to_write_floor": elapsed / floor}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
