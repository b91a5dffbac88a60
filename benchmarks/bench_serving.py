"""Serving benchmark: the real BentoML service against a bare FastAPI app doing the same computation,
and how fast /readyz answers while the service works on the largest requests it accepts.

    python benchmarks/bench_serving.py [--seconds 10] [--concurrency 1 8 64] [--json FILE]
                                       [--score-customers 200000]

Both servers run on 127.0.0.1 with one worker and the same Predictor (validation, features,
calibrated probability, SHAP reasons); an aiohttp closed loop drives each at concurrency 1, 8 and 64
with a feature-record request. Prints p50/p99 latency and requests/s per server and the BentoML /
FastAPI ratio, measured in the same run (each point alternates between the two servers in five
rounds, so other load on the machine falls on both alike). Then, from a separate process, 8 maximal valid requests at
once (raw behaviour: 1,000 customers with 200 events each, every one its own as_of, on /predict; and
1,000 feature records with top_k 20 on /explain) while /readyz is asked every 20 ms: its p99 against
its p99 on the idle service. ``--json FILE`` writes the figures (``readyz_p99_ms_under_load``, and p99
and ratio per route and concurrency). With ``--score-customers N`` it also times `churnml score`
(batch scoring with reasons) on a simulated business of N customers. Targets: predict+explain p99
<= 25 ms at concurrency 1, throughput >= 0.8x the bare app at concurrency 8 (issue 5), /readyz p99
<= 100 ms under the 8 maximal requests (issue 19), 200k customers scored with reasons in <= 3 min.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE_APP = """
from fastapi import FastAPI
from pydantic import BaseModel, Field
from typing import Annotated
from churnml.config import Settings
from churnml.service import Customers, ExplainResponse, PredictResponse, Predictor

predictor = Predictor.from_settings(Settings.from_env())
app = FastAPI()

class PredictIn(BaseModel):
    customers: Customers

class ExplainIn(BaseModel):
    customers: Customers
    top_k: Annotated[int, Field(ge=1, le=20)] = 3

@app.post("/predict")
def predict(body: PredictIn) -> PredictResponse:
    return predictor.predict(body.customers)

@app.post("/explain")
def explain(body: ExplainIn) -> ExplainResponse:
    return predictor.explain(body.customers, body.top_k)

@app.get("/readyz")
def ready() -> dict:
    return {}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=env["CHURNML_HOME"])
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server {url} exited")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server {url} not ready in {timeout} s")


async def _load(url: str, body: bytes, concurrency: int, seconds: float) -> tuple[list[float], int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def load(
    urls: dict[str, str], body: bytes, concurrency: int, seconds: float, rounds: int = 5
) -> dict[str, dict]:
    """Each server in turn, ``rounds`` times ``seconds / rounds`` (the order alternating), so a change in
    the machine's other load falls on both alike; p50/p99 latency and requests/s per server."""
    for url in urls.values():
        asyncio.run(_load(url, body, concurrency, min(2.0, seconds)))  # warm-up
    got: dict[str, tuple[list[float], int, float]] = {name: ([], 0, 0.0) for name in urls}
    names = list(urls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            began = time.perf_counter()
            lat, errors = asyncio.run(_load(urls[name], body, concurrency, seconds / rounds))
            old_lat, old_errors, wall = got[name]
            got[name] = (old_lat + lat, old_errors + errors, wall + time.perf_counter() - began)
    out = {}
    for name, (lat, errors, wall) in got.items():
        ms = np.array(lat) * 1000
        out[name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "rps": len(ms) / wall,
                     "n": len(ms), "errors": errors}  # fmt: skip
    return out


def _heavy(url: str, body_file: str, route: str, n: int) -> None:
    """(The readyz measurement's load, run in its own process): ``n`` requests at once; prints a JSON line."""
    import aiohttp

    body = Path(body_file).read_bytes()

    async def send() -> list[tuple[int, float]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

            async def one() -> tuple[int, float]:
                began = time.perf_counter()
                async with session.post(
                    url + route, data=body, headers={"content-type": "application/json"}
                ) as r:
                    await r.read()
                    return r.status, time.perf_counter() - began

            return await asyncio.gather(*(one() for _ in range(n)))

    print(json.dumps(asyncio.run(send())))


def readyz_latencies(
    url: str, seconds: float | None = None, until: subprocess.Popen | None = None
) -> np.ndarray:
    """/readyz asked every 20 ms for ``seconds`` or until ``until`` exits: latencies in ms."""
    import httpx

    latencies = []
    stop = time.perf_counter() + (seconds or 1e9)
    with httpx.Client(timeout=10) as http:
        while time.perf_counter() < stop and (until is None or until.poll() is None):
            began = time.perf_counter()
            ok = http.get(url + "/readyz").status_code == 200
            latencies.append((time.perf_counter() - began) * 1000 if ok else 10_000.0)
            time.sleep(0.02)
    return np.array(latencies)


def readyz_under_load(url: str, home: Path, bodies: dict[str, tuple[str, bytes]], n: int = 8) -> dict:
    """/readyz p50/p99/max while ``n`` of each maximal request run (load from a separate process)."""
    idle = readyz_latencies(url, seconds=3)
    out: dict = {"idle": {"p50_ms": float(np.percentile(idle, 50)), "p99_ms": float(np.percentile(idle, 99))}}
    for name, (route, body) in bodies.items():
        path = home / f"maximal_{name}.json"
        path.write_bytes(body)
        began = time.perf_counter()
        heavy = subprocess.Popen([sys.executable, __file__, "--heavy", url, str(path), route, str(n)],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        ms = readyz_latencies(url, until=heavy)
        answers = json.loads(heavy.communicate()[0])
        out[name] = {"route": route, "body_mb": round(len(body) / 1e6, 1), "requests": n,
                     "statuses": sorted({s for s, _ in answers}), "wall_s": round(time.perf_counter() - began, 1),
                     "slowest_s": round(max(t for _, t in answers), 1), "readyz_n": len(ms),
                     "readyz_p50_ms": float(np.percentile(ms, 50)), "readyz_p99_ms": float(np.percentile(ms, 99)),
                     "readyz_max_ms": float(ms.max())}  # fmt: skip
    out["readyz_p99_ms_under_load"] = max(v["readyz_p99_ms"] for k, v in out.items() if k != "idle")
    return out


def maximal_bodies(home: Path, record: dict) -> dict[str, tuple[str, bytes]]:
    """The largest valid requests: 200,000 raw events (1,000 customers, each its own as_of) and
    1,000 feature records explained with top_k 20."""
    import pandas as pd

    events = pd.read_parquet(home / "data" / "simulated" / "events.parquet").head(200)
    evs = [{"timestamp": t.isoformat(), "event_type": k, "value": None if pd.isna(v) else float(v)}
           for t, k, v in zip(events["timestamp"], events["event_type"], events["value"], strict=True)]  # fmt: skip
    last = events["timestamp"].max().normalize()
    raw = [{"customer_id": f"r{i}", "as_of": str((last + pd.Timedelta(days=1 + i % 365)).date()), "events": evs}
           for i in range(1000)]  # fmt: skip
    records = [{"customer_id": f"c{i}", "features": record} for i in range(1000)]
    return {"raw_events": ("/predict", json.dumps({"customers": raw}).encode()),
            "feature_records": ("/explain", json.dumps({"customers": records, "top_k": 20}).encode())}  # fmt: skip


def compare(urls: dict[str, str], body: bytes, concurrency: list[int], seconds: float) -> dict:
    """BentoML against the bare FastAPI app per route and concurrency: printed, and returned."""
    print(f"{'route':9} {'conc':>4} | {'bentoml p50/p99 ms':>20} {'rps':>7} | {'fastapi p50/p99 ms':>20} "
          f"{'rps':>7} | {'rps ratio':>9}")  # fmt: skip
    figures: dict = {}
    for route in ("/predict", "/explain"):
        for c in concurrency:
            got = load({name: url + route for name, url in urls.items()}, body, c, seconds)
            b, f = got["bentoml"], got["fastapi"]
            ratio = b["rps"] / f["rps"]
            figures.setdefault(route, {})[str(c)] = {
                "bentoml": b,
                "fastapi": f,
                "p99_ms": b["p99"],
                "ratio": ratio,
            }
            print(f"{route:9} {c:>4} | {b['p50']:>9.1f} / {b['p99']:>8.1f} {b['rps']:>7.0f} | "
                  f"{f['p50']:>9.1f} / {f['p99']:>8.1f} {f['rps']:>7.0f} | {ratio:>8.2f}x"
                  f"{'  errors: ' + str(b['errors']) + '/' + str(f['errors']) if b['errors'] or f['errors'] else ''}",
                  flush=True)  # fmt: skip
    return figures


def prepare(home: Path, env: dict[str, str]) -> tuple[str, dict]:
    """A trained champion under ``home`` (made once), imported into the BentoML store; its tag and one
    feature record."""
    import pandas as pd

    churnml = str(BIN / "churnml")
    sim = home / "data" / "simulated"
    if not (home / "mlflow.db").exists():
        print("simulating 2,000 customers and training the model ...", flush=True)
        sh([churnml, "simulate", "--customers", "2000", "--months", "14", "--out", str(sim)], env)
        sh([churnml, "train", "--spec", str(sim / "spec.yaml"), "--trials", "5"], env)
        sh([churnml, "promote"], env)
    from churnml.config import Settings

    os.environ.update(env)
    from churnml.service import import_registered_model

    tag = import_registered_model(Settings.from_env())
    table = home / "data" / "features" / "simulated.parquet"
    if not table.exists():
        sh([churnml, "features", "--spec", str(sim / "spec.yaml"), "--out", str(table)], env)
    features = pd.read_parquet(table)
    import bentoml

    from churnml.model import ChurnModel

    names = ChurnModel.load(Path(bentoml.models.get(tag).path)).feature_names
    row = features.iloc[len(features) // 2][names]
    record = {k: (None if isinstance(v, float) and np.isnan(v) else (v.item() if hasattr(v, "item") else v))
              for k, v in row.items()}  # fmt: skip
    return tag, record


def start_servers(home: Path, env: dict[str, str]) -> tuple[dict[str, subprocess.Popen], dict[str, str]]:
    bento_port, bare_port = free_port(), free_port()
    (home / "bare_app.py").write_text(BARE_APP)
    servers = {
        "bentoml": subprocess.Popen(
            [str(BIN / "bentoml"), "serve", "churnml.service.bento:ChurnService", "--host", "127.0.0.1",
             "--port", str(bento_port), "--working-dir", str(home)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        "fastapi": subprocess.Popen(
            [str(BIN / "uvicorn"), "bare_app:app", "--host", "127.0.0.1", "--port", str(bare_port),
             "--workers", "1", "--no-access-log", "--log-level", "warning"],
            env={**env, "PYTHONPATH": f"{home}{os.pathsep}{REPO}"}, cwd=home, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True),
    }  # fmt: skip
    return servers, {"bentoml": f"http://127.0.0.1:{bento_port}", "fastapi": f"http://127.0.0.1:{bare_port}"}


def batch_scoring(home: Path, env: dict[str, str], customers: int) -> None:
    churnml = str(BIN / "churnml")
    big = home / "data" / f"sim{customers}"
    if not (big / "spec.yaml").exists():
        print(f"\nsimulating {customers:,} customers for batch scoring ...", flush=True)
        sh([churnml, "simulate", "--customers", str(customers), "--months", "14", "--out", str(big)], env)
    began = time.perf_counter()
    out = sh([churnml, "score", "--spec", str(big / "spec.yaml"), "--out", str(home / "bench_reports"),
              "--history", "0"], env)  # fmt: skip
    took = time.perf_counter() - began
    print(f"\nbatch scoring with reasons: {took:.1f} s end to end (target <= 180 s)")
    print(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--heavy":
        return _heavy(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--score-customers", type=int, default=0)
    parser.add_argument("--home", type=Path, default=None, help="Work folder (default: a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this file.")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="churnml-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CHURNML_", "BENTOML_"))}
    env |= {"CHURNML_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip
    tag, record = prepare(home, env)
    env["CHURNML_BENTO_MODEL"] = tag
    body = json.dumps({"customers": [{"customer_id": "bench", "features": record}]}).encode()
    servers, urls = start_servers(home, env)
    try:
        for name, proc in servers.items():
            wait_ready(urls[name], proc)
        print(f"\nmodel {tag}; {args.seconds:.0f} s per point, one worker each, feature-record requests\n")
        figures = {"model": tag, "routes": compare(urls, body, args.concurrency, args.seconds)}
        os.killpg(servers["fastapi"].pid, signal.SIGTERM)  # the bare app is idle from here: free its core
        servers["fastapi"].wait(timeout=30)
        print("\n/readyz while 8 maximal valid requests run at once (sent from another process):")
        loaded = readyz_under_load(urls["bentoml"], home, maximal_bodies(home, record))
        figures |= {"readyz": loaded, "readyz_p99_ms_under_load": loaded["readyz_p99_ms_under_load"]}
        idle = loaded["idle"]["p99_ms"]
        for name, v in loaded.items():
            if isinstance(v, dict) and "route" in v:
                print(f"  {name:16} {v['route']:9} {v['body_mb']:>5.1f} MB x{v['requests']} -> {v['statuses']} "
                      f"in {v['wall_s']} s | readyz p50 {v['readyz_p50_ms']:.1f} / p99 {v['readyz_p99_ms']:.1f} / "
                      f"max {v['readyz_max_ms']:.1f} ms ({v['readyz_p99_ms'] / idle:.1f}x idle p99 {idle:.1f} ms)")  # fmt: skip
        print(f"readyz_p99_ms_under_load: {loaded['readyz_p99_ms_under_load']:.1f} (target <= 100)")
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
        print(f"figures written to {args.json}")
    if args.score_customers:
        batch_scoring(home, env, args.score_customers)


if __name__ == "__main__":
    main()
