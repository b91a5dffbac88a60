"""MLflow as a team runs it: a tracking server on PostgreSQL, artifacts in S3-compatible storage.

Real servers on 127.0.0.1, started and stopped here: PostgreSQL (tests/pg.py), moto's S3 server (no
MinIO installs here; deploy/docker-compose.yml runs MinIO) and `mlflow server` proxying the artifacts
to the bucket. Then the real commands: `churnml train` (its Optuna study on the same PostgreSQL),
`churnml promote`, `churnml serve`, and an explanation over HTTP from the model the service loaded
through the tracking server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, service_env, start_server, stop_server

pytestmark = pytest.mark.slow

BUCKET = "churnml-artifacts"
# moto accepts any credentials; MLflow's S3 client (boto3) needs some to sign its requests
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class TeamStack:
    tracking_uri: str
    s3_endpoint: str
    optuna_url: str
    mlflow_db: str


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own handle
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamStack]:
    """moto's S3 server with an empty bucket, and `mlflow server` on PostgreSQL storing artifacts in it."""
    import boto3

    folder = tmp_path_factory.mktemp("stack")
    bin_dir = Path(sys.executable).parent
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}, **S3_ENV}
    s3_port, mlflow_port = free_port(), free_port()
    s3 = _start([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], folder / "s3.log", env)
    processes = [s3]
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_http(endpoint, s3, folder / "s3.log")
        boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)
        mlflow_db = postgres.create_database("mlflow")
        server = _start(
            [str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--backend-store-uri", mlflow_db, "--artifacts-destination", f"s3://{BUCKET}/mlflow",
             "--workers", "1"],
            folder / "mlflow.log", {**env, "MLFLOW_S3_ENDPOINT_URL": endpoint},
        )  # fmt: skip
        processes.append(server)
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", server, folder / "mlflow.log")
        yield TeamStack(
            f"http://127.0.0.1:{mlflow_port}", endpoint, postgres.create_database("optuna"), mlflow_db
        )
    finally:
        for process in reversed(processes):
            _stop(process)


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def _churnml(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(Path(sys.executable).parent / "churnml"), *argv], env=service_env(home, **env),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"churnml {' '.join(argv)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_train_promote_and_serve_on_postgres_and_s3(stack: TeamStack, tmp_path: Path) -> None:
    import boto3
    import psycopg
    from sqlalchemy.engine import make_url

    team = {"MLFLOW_TRACKING_URI": stack.tracking_uri, "CHURNML_OPTUNA_STORAGE": stack.optuna_url,
            "CHURNML_OPTUNA_HEARTBEAT": "2"}  # fmt: skip
    _churnml(tmp_path, "simulate", "--customers", "600", "--months", "12", "--out", str(tmp_path / "sim"))
    spec = str(tmp_path / "sim" / "spec.yaml")
    trained = _churnml(tmp_path, "train", "--spec", spec, "--trials", "3", "--study", "team", **team)
    assert stack.tracking_uri in trained.stdout and "registered churn v1 as challenger" in trained.stdout
    _churnml(tmp_path, "promote", **team)
    # the registry lives in PostgreSQL, the model files in the bucket, nothing on this machine's disk
    url = make_url(stack.mlflow_db).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(url) as con:
        aliases = con.execute("SELECT alias, version FROM registered_model_aliases").fetchall()
    assert ("champion", 1) in aliases
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, **_boto_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.endswith("/MLmodel") for k in keys) and any(k.endswith(".txt") for k in keys), keys[:20]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    with psycopg.connect(
        make_url(stack.optuna_url).set(drivername="postgresql").render_as_string(False)
    ) as con:
        finished = con.execute(
            "SELECT count(*) FROM trials t JOIN studies s USING (study_id) "
            "WHERE s.study_name = 'team' AND t.state IN ('COMPLETE', 'PRUNED')"
        ).fetchone()
    assert finished == (3,)  # the tuning study sat beside the tracking store, with its budget met
    server = start_server(tmp_path, token="team-token", **team)
    try:
        assert server.process.poll() is None, server.log()[-3000:]
        body = {"customers": [{"customer_id": "demo", "events": [{"timestamp": "2025-06-01T10:00:00",
                                                                  "event_type": "login"}]}]}  # fmt: skip
        r = server.post("/explain", body)
        assert r.status_code == 200 and r.json()["explanations"][0]["reasons"], r.text
        assert server.get("/readyz").status_code == 200
    finally:
        stop_server(server)
