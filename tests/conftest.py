"""Shared fixtures: tiny in-memory datasets written to a temp folder, and the shared public data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from churnml.config import Settings, shared_data_dir
from churnml.engine import connect
from churnml.spec import DatasetSpec, parse_spec


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


# A small trained model shared by the training and registry tests (training takes a few seconds).
@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from churnml.catalogue import build_catalogue
    from churnml.features import training_table
    from churnml.simulate import SimulationConfig, simulate
    from churnml.spec import load_spec
    from churnml.train import TrainConfig, train_model
    from churnml.validate import prepare_dataset

    out = tmp_path_factory.mktemp("sim")
    simulate(SimulationConfig(customers=2500, months=14, seed=5), out, workers=1)
    with connect(Settings(home=out, duckdb_memory_limit="1GB")) as con:
        spec = load_spec(out / "spec.yaml")
        prepare_dataset(con, spec)
        table, fs = training_table(con, spec)
    result = train_model(
        table, fs, build_catalogue(fs), spec.observation.horizon_days, TrainConfig(trials=4, backtest_folds=2)
    )
    return table, fs, result
