"""Shared fixtures: tiny in-memory datasets written to a temp folder, and the shared public data."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from churnml.config import Settings, shared_data_dir
from churnml.engine import connect
from churnml.spec import DatasetSpec, parse_spec
from churnml.workspace.store import Store, open_store
from tests.pg import PostgresServer


@pytest.fixture(autouse=True)
def _isolated_mlflow_env() -> Iterator[None]:
    """mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI: keep one test's store out of the next."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[k]
    os.environ.update(saved)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, duckdb_memory_limit="1GB", duckdb_threads=2)


@pytest.fixture
def con(settings: Settings) -> duckdb.DuckDBPyConnection:
    connection = connect(settings)
    yield connection
    connection.close()


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path} (set CHURNML_SHARED_DATA)")
    return path


def tiny_customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "signup": pd.to_datetime(["2024-01-01", "2024-01-15", "2024-02-01"]),
            "plan": ["team", "starter", "business"],
            "mrr": [300.0, 45.0, 1000.0],
        }
    )


def tiny_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cust": ["a", "a", "b", "c", "c", "c"],
            "ts": pd.to_datetime(
                [
                    "2024-01-02 10:00",
                    "2024-02-03 11:00",
                    "2024-01-20 09:30",
                    "2024-02-02 00:00",
                    "2024-02-10 00:00",
                    "2024-03-01 00:00",
                ]
            ),
            "kind": ["login", "ticket", "login", "login", "nps", "login"],
            "val": [None, 4.0, None, None, 9.0, None],
        }
    )


def tiny_subscriptions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cust": ["a", "b", "c"],
            "start": pd.to_datetime(["2024-01-01", "2024-01-15", "2024-02-01"]),
            "end": pd.to_datetime([None, "2024-03-01", None]),
            "mrr": [300.0, 45.0, 1000.0],
        }
    )


def tiny_spec_dict(fmt: str = "parquet") -> dict:
    return {
        "name": "tiny",
        "source": {"kind": "files", "path": "."},
        "customers": {
            "file": f"customers.{fmt}",
            "columns": {"customer_id": "id", "signup_date": "signup", "plan": "plan", "mrr": "mrr"},
        },
        "events": [
            {
                "file": f"events.{fmt}",
                "columns": {"customer_id": "cust", "timestamp": "ts", "event_type": "kind", "value": "val"},
                "event_types": {"ticket": "support_ticket", "nps": "nps_response"},
            }
        ],
        "subscriptions": {
            "file": f"subscriptions.{fmt}",
            "columns": {"customer_id": "cust", "start": "start", "end": "end", "mrr": "mrr"},
        },
        "churn": {"definition": "cancellation", "grace_days": 30},
        "observation": {"every": "1 month", "horizon_days": 30},
        "validation": {"max_quarantine_fraction": 0.5, "as_of": "2025-01-01T00:00:00"},
    }


TinyWriter = Callable[..., DatasetSpec]


@pytest.fixture
def write_tiny(tmp_path: Path) -> TinyWriter:
    """Write the tiny tables (optionally replaced) as Parquet or CSV and return a spec reading them."""

    def write(
        customers: pd.DataFrame | None = None,
        events: pd.DataFrame | None = None,
        subscriptions: pd.DataFrame | None = None,
        fmt: str = "parquet",
        spec_changes: Callable[[dict], None] | None = None,
    ) -> DatasetSpec:
        frames = {
            "customers": tiny_customers() if customers is None else customers,
            "events": tiny_events() if events is None else events,
            "subscriptions": tiny_subscriptions() if subscriptions is None else subscriptions,
        }
        for name, frame in frames.items():
            path = tmp_path / f"{name}.{fmt}"
            if fmt == "csv":
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
        spec = tiny_spec_dict(fmt)
        if spec_changes:
            spec_changes(spec)
        return parse_spec(spec, base_dir=tmp_path)

    return write


# The CSM pages' workspace (tests/test_pages.py builds its tables), for the page, activity and alert tests.
@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CHURNML_HOME in a temp folder, without a token, a database URL or alert settings from outside."""
    monkeypatch.setenv("CHURNML_HOME", str(tmp_path))
    for name in (
        "CHURNML_API_TOKEN",
        "CHURNML_DATABASE_URL",
        "CHURNML_ALERT_WEBHOOK_URL",
        "CHURNML_ALERT_MIN_RISE",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


_csm_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def csm_database(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CSM store the pages, alerts and CLI write to: the default SQLite file under ``home``, or a new
    database on the run's PostgreSQL server (``CHURNML_DATABASE_URL``). Use it for a whole module with
    ``pytestmark = pytest.mark.usefixtures("csm_database")``."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres")
        monkeypatch.setenv("CHURNML_DATABASE_URL", server.create_database(f"csm_{next(_csm_databases)}"))
    return request.param


@contextlib.contextmanager
def csm_store() -> Iterator[Store]:
    """The CSM store of the current settings, opened and closed (a PostgreSQL connection left open warns)."""
    store = open_store(Settings.from_env().store_url)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    from tests.test_pages import workspace_tables

    return workspace_tables()


@pytest.fixture
def workspace(home: Path, tables: dict[str, pd.DataFrame]) -> Path:
    from tests.test_pages import write_workspace

    return write_workspace(Settings.from_env().workspace_path, tables)


# A small simulated business and a model trained on it, shared by the training, registry, scoring,
# serving and page tests (training takes a few seconds).
@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from churnml.simulate import SimulationConfig, simulate

    out = tmp_path_factory.mktemp("sim")
    simulate(SimulationConfig(customers=2500, months=16, seed=5), out, workers=1)
    return out


@pytest.fixture(scope="session")
def trained(sim_dir: Path):
    from churnml.data import load_dataset
    from churnml.features.batch import training_table
    from churnml.labels import label_margin
    from churnml.modeling import TrainConfig, TrainTask, train_model
    from churnml.spec import load_spec

    with connect(Settings(home=sim_dir, duckdb_memory_limit="1GB")) as con:
        spec = load_spec(sim_dir / "spec.yaml")
        tables = load_dataset(con, spec)
        table, fs = training_table(tables, spec)
    task = TrainTask(spec.observation.horizon_days, purge_days=label_margin(spec).days)
    result = train_model(table, fs, task, TrainConfig(trials=4, backtest_folds=2))
    return table, fs, result


@pytest.fixture(scope="session")
def champion_home(trained, sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CHURNML_HOME whose MLflow store (SQLite) has the trained model as churn@champion, and whose
    reports/ holds the batch scores of the simulated business (written by the real `churnml score`)."""
    import mlflow

    from churnml.modeling import TrainConfig
    from churnml.registry import check_tracking_server, log_training, promote_challenger

    table, _, result = trained
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home)
    client = check_tracking_server(home_store(home))  # not $MLFLOW_TRACKING_URI: other tests set it
    try:
        log_training(result, table, TrainConfig(trials=4), settings, "sim", client)
        assert promote_challenger(client).promoted
    finally:
        mlflow.set_tracking_uri(None)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "churnml"), "score", "--spec", str(sim_dir / "spec.yaml")],
        env=service_env(home, **RISK_ENV), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return home


# risk tier cut-offs other than the defaults (0.5 / 0.2), so tests see that the settings reach
# batch scoring and the service
RISK_ENV = {"CHURNML_RISK_HIGH": "0.3", "CHURNML_RISK_MEDIUM": "0.1"}


def expected_tier(probability: float) -> str:
    return "high" if probability >= 0.3 else "medium" if probability >= 0.1 else "low"


def home_store(home: Path) -> str:
    """The SQLite tracking store `churnml` uses under ``home`` (when MLFLOW_TRACKING_URI is unset)."""
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def service_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for churnml commands and the service: everything under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHURNML_", "MLFLOW_", "BENTOML_"))}
    return {**env, "CHURNML_HOME": str(home), "BENTOML_HOME": str(home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True", "CHURNML_DUCKDB_MEMORY_LIMIT": "1GB", **extra}  # fmt: skip


def own_bentoml_home(folder: Path) -> dict[str, str]:
    """Environment giving a server started beside ``served`` a BentoML store of its own (it imports the
    champion into it): BentoML keeps the Prometheus files of /metrics in BENTOML_HOME and empties them
    when a server starts, which would leave the running one's /metrics blank."""
    return {"BENTOML_HOME": str(folder / "bentoml")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A real `churnml serve` process (BentoML) on 127.0.0.1."""

    url: str
    token: str | None
    process: subprocess.Popen
    log_path: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def post(self, route: str, body: object = None, **kwargs):  # noqa: ANN003, ANN201
        import httpx

        headers = {**self.headers(), **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["json"] = body
        return httpx.post(self.url + route, headers=headers, timeout=60, **kwargs)

    def get(self, route: str, **kwargs):  # noqa: ANN003, ANN201
        import httpx

        headers = {**self.headers(), **kwargs.pop("headers", {})}
        return httpx.get(self.url + route, headers=headers, timeout=60, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    home: Path,
    token: str | None = None,
    wait_ready: bool = True,
    direct: bool = False,
    workers: int = 1,
    **env: str,
) -> Server:
    """Start `churnml serve` (or, with ``direct``, `bentoml serve` on the service module, as a built
    bento would run) and wait until it is ready (or only alive)."""
    import httpx

    port = free_port()
    argv = [
        str(Path(sys.executable).parent / "churnml"),
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if direct:
        argv = [str(Path(sys.executable).parent / "bentoml"), "serve", "serving.service:ChurnService",
                "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(Path(__file__).parents[1])]  # fmt: skip
    log_path = home / f"serve-{port}.log"
    extra = {"CHURNML_API_TOKEN": token} if token else {}
    with log_path.open("w") as log_file:  # the child keeps its own handle
        process = subprocess.Popen(
            argv,
            env=service_env(home, **extra, **env), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", token, process, log_path)
    deadline = time.time() + 120
    while True:
        if process.poll() is not None:
            return server  # exited: the caller inspects the log
        try:
            r = httpx.get(server.url + ("/readyz" if wait_ready else "/livez"), timeout=2)
            if r.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            stop_server(server)
            raise RuntimeError(f"service did not start in 120 s:\n{server.log()[-3000:]}")
        time.sleep(0.5)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    return [int(p) for p, pp in (line.split() for line in out.splitlines()[1:]) if int(pp) == pid]


def stop_server(server: Server) -> None:
    """SIGTERM the arbiter (it stops its workers); whatever is left after 30 s is killed."""
    workers = _children(server.process.pid)  # BentoML workers run in process groups of their own
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (tests/pg.py) for the whole run, on 127.0.0.1, stopped at the end."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def served(champion_home: Path) -> Iterator[Server]:
    """The real service for the champion model, with token auth on (token 'test-token').

    Several test modules send it a wrong credential on purpose; the lockout (5 by default) has its own
    servers in tests/reliability, so here it allows more before it answers 429."""
    server = start_server(champion_home, token="test-token", CHURNML_AUTH_ATTEMPTS="50", **RISK_ENV)
    if server.process.poll() is not None:
        raise RuntimeError(f"service exited:\n{server.log()[-3000:]}")
    yield server
    stop_server(server)
