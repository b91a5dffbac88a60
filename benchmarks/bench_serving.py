"""Serving benchmark: the real BentoML service against a bare FastAPI app doing the same computation.

    python benchmarks/bench_serving.py [--seconds 10] [--concurrency 1 8 64] [--score-customers 200000]

Both servers run on 127.0.0.1 with one worker and the same Predictor (validation, features,
calibrated probability, SHAP reasons); a load generator in its own process (aiohttp, closed loop)
drives each at concurrency 1, 8 and 64 with a feature-record request. Prints p50/p99 latency and
requests/s per server and the BentoML / FastAPI ratio, measured in the same run. With
``--score-customers N`` it also times `churnml score` (batch scoring with reasons) on a simulated
business of N customers. Targets (issue 5): predict+explain p99 <= 25 ms at concurrency 1,
throughput >= 0.8x the bare app at concurrency 8, 200k customers scored with reasons in <= 3 min.
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
from churnml.serve import Customers, ExplainResponse, PredictResponse, Predictor

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


def load(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    asyncio.run(_load(url, body, concurrency, min(2.0, seconds)))  # warm-up
    began = time.perf_counter()
    lat, errors = asyncio.run(_load(url, body, concurrency, seconds))
    wall = time.perf_counter() - began
    ms = np.array(lat) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "rps": len(ms) / wall,
            "n": len(ms), "errors": errors}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--score-customers", type=int, default=0)
    parser.add_argument("--home", type=Path, default=None, help="Work folder (default: a temp dir).")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="churnml-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CHURNML_", "BENTOML_"))}
    env |= {"CHURNML_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PYTHONPATH": str(REPO)}  # fmt: skip
    churnml = str(BIN / "churnml")
    sim = home / "data" / "simulated"
    if not (home / "mlflow.db").exists():
        print("simulating 2,000 customers and training the model ...", flush=True)
        sh([churnml, "simulate", "--customers", "2000", "--months", "14", "--out", str(sim)], env)
        sh([churnml, "train", "--spec", str(sim / "spec.yaml"), "--trials", "5"], env)
        sh([churnml, "promote"], env)

    import pandas as pd

    from churnml.config import Settings
    from churnml.features import infer_feature_set  # noqa: F401 - warms imports before timing

    os.environ.update(env)
    from churnml.serve import import_registered_model

    tag = import_registered_model(Settings.from_env())
    env["CHURNML_BENTO_MODEL"] = tag
    features = pd.read_parquet(home / "data" / "features" / "simulated.parquet") if (
        home / "data" / "features" / "simulated.parquet").exists() else None  # fmt: skip
    if features is None:
        sh([churnml, "features", "--spec", str(sim / "spec.yaml"), "--out",
            str(home / "data" / "features" / "simulated.parquet")], env)  # fmt: skip
        features = pd.read_parquet(home / "data" / "features" / "simulated.parquet")
    import bentoml

    from churnml.model import ChurnModel

    names = ChurnModel.load(Path(bentoml.models.get(tag).path)).feature_names
    row = features.iloc[len(features) // 2][names]
    record = {k: (None if isinstance(v, float) and np.isnan(v) else (v.item() if hasattr(v, "item") else v))
              for k, v in row.items()}  # fmt: skip
    body = json.dumps({"customers": [{"customer_id": "bench", "features": record}]}).encode()

    bento_port, bare_port = free_port(), free_port()
    (home / "bare_app.py").write_text(BARE_APP)
    servers = {
        "bentoml": subprocess.Popen(
            [str(BIN / "bentoml"), "serve", "serving.service:ChurnService", "--host", "127.0.0.1",
             "--port", str(bento_port), "--working-dir", str(REPO)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
        "fastapi": subprocess.Popen(
            [str(BIN / "uvicorn"), "bare_app:app", "--host", "127.0.0.1", "--port", str(bare_port),
             "--workers", "1", "--no-access-log", "--log-level", "warning"],
            env={**env, "PYTHONPATH": f"{home}{os.pathsep}{REPO}"}, cwd=home, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True),
    }  # fmt: skip
    urls = {"bentoml": f"http://127.0.0.1:{bento_port}", "fastapi": f"http://127.0.0.1:{bare_port}"}
    try:
        for name, proc in servers.items():
            wait_ready(urls[name], proc)
        print(f"\nmodel {tag}; {args.seconds:.0f} s per point, one worker each, feature-record requests\n")
        print(f"{'route':9} {'conc':>4} | {'bentoml p50/p99 ms':>20} {'rps':>7} | {'fastapi p50/p99 ms':>20} "
              f"{'rps':>7} | {'rps ratio':>9}")  # fmt: skip
        for route in ("/predict", "/explain"):
            for c in args.concurrency:
                got = {name: load(urls[name] + route, body, c, args.seconds) for name in servers}
                b, f = got["bentoml"], got["fastapi"]
                print(f"{route:9} {c:>4} | {b['p50']:>9.1f} / {b['p99']:>8.1f} {b['rps']:>7.0f} | "
                      f"{f['p50']:>9.1f} / {f['p99']:>8.1f} {f['rps']:>7.0f} | {b['rps'] / f['rps']:>8.2f}x"
                      f"{'  errors: ' + str(b['errors']) + '/' + str(f['errors']) if b['errors'] or f['errors'] else ''}",
                      flush=True)  # fmt: skip
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)

    if args.score_customers:
        big = home / "data" / f"sim{args.score_customers}"
        if not (big / "spec.yaml").exists():
            print(f"\nsimulating {args.score_customers:,} customers for batch scoring ...", flush=True)
            sh(
                [
                    churnml,
                    "simulate",
                    "--customers",
                    str(args.score_customers),
                    "--months",
                    "14",
                    "--out",
                    str(big),
                ],
                env,
            )
        began = time.perf_counter()
        out = sh([churnml, "score", "--spec", str(big / "spec.yaml"), "--out", str(home / "bench_reports"),
                  "--history", "0"], env)  # fmt: skip
        took = time.perf_counter() - began
        print(f"\nbatch scoring with reasons: {took:.1f} s end to end (target <= 180 s)")
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
