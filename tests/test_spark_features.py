"""`churnml features --engine spark`: the per-customer feature step inside Spark (local[2]) writes the
same table as the DuckDB engine, compared row by row as hashes of the two Parquet files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import service_env

pytestmark = [
    pytest.mark.slow,
    # py4j leaves its gateway sockets to the garbage collector when the session stops
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _features(home: Path, spec: Path, out: Path, *extra: str, **env: str) -> None:
    argv = [
        str(Path(sys.executable).parent / "churnml"),
        "features",
        "--spec",
        str(spec),
        "--out",
        str(out),
        *extra,
    ]
    env = service_env(home, CHURNML_SPARK_MASTER="local[2]", CHURNML_SPARK_PARTITIONS="4", **env)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def row_hashes(path: Path) -> np.ndarray:
    return pd.util.hash_pandas_object(pd.read_parquet(path), index=False).to_numpy()


def _small_business(tmp_path: Path) -> Path:
    """300 simulated accounts over 10 months (skips without Java)."""
    if shutil.which("java") is None:
        pytest.skip("PySpark needs a Java runtime and `java` is not on PATH (.ci/run installs one)")
    sim = tmp_path / "sim"
    done = subprocess.run([str(Path(sys.executable).parent / "churnml"), "simulate", "--customers", "300",
                           "--months", "10", "--out", str(sim)],
                          env=service_env(tmp_path), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return sim


def test_spark_engine_writes_the_duckdb_engines_table(tmp_path: Path) -> None:
    sim = _small_business(tmp_path)
    _features(tmp_path, sim / "spec.yaml", tmp_path / "duckdb.parquet")
    shared = tmp_path / "shared"  # a folder every executor mounts: the contract tables are staged there
    _features(tmp_path, sim / "spec.yaml", tmp_path / "spark.parquet", "--engine", "spark",
              CHURNML_SPARK_STAGING=str(shared))  # fmt: skip
    assert shared.is_dir() and not any(shared.iterdir())  # used, and cleaned up after the run
    duck, spark = pd.read_parquet(tmp_path / "duckdb.parquet"), pd.read_parquet(tmp_path / "spark.parquet")
    assert list(spark.columns) == list(duck.columns) and list(spark.dtypes) == list(duck.dtypes)
    assert len(duck) > 500 and duck["customer_id"].nunique() > 100
    np.testing.assert_array_equal(
        row_hashes(tmp_path / "spark.parquet"), row_hashes(tmp_path / "duckdb.parquet")
    )
    catalogue = [(tmp_path / f"{name}.catalogue.csv").read_text() for name in ("duckdb", "spark")]
    assert catalogue[0] == catalogue[1]


def test_training_with_features_on_spark_gives_the_duckdb_engines_model(tmp_path: Path) -> None:
    """`churnml train --engine spark`, end to end: the same features, so the same tuned and calibrated
    model, measured the same (every metric of the MLflow run equal)."""
    import mlflow

    sim, cli = _small_business(tmp_path), str(Path(sys.executable).parent / "churnml")
    metrics = {}
    for engine in ("duckdb", "spark"):
        home = tmp_path / engine
        env = service_env(home, CHURNML_SPARK_MASTER="local[2]", CHURNML_SPARK_PARTITIONS="4")
        argv = [cli, "train", "--spec", str(sim / "spec.yaml"), "--trials", "2", "--engine", engine]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 1
        metrics[engine] = runs[0].data.metrics
    assert len(metrics["duckdb"]) > 10 and "test_roc_auc" in metrics["duckdb"], sorted(metrics["duckdb"])
    assert metrics["spark"] == metrics["duckdb"]


def test_unknown_engine_is_a_usage_error(tmp_path: Path) -> None:
    argv = [str(Path(sys.executable).parent / "churnml"), "features", "--spec", str(tmp_path / "none.yaml"),
            "--out", str(tmp_path / "x.parquet"), "--engine", "hadoop"]  # fmt: skip
    done = subprocess.run(argv, env=service_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--engine: expected one of duckdb, spark, got 'hadoop'" in done.stderr


def test_scoring_with_features_on_spark_gives_the_same_scores_and_reasons(
    trained, sim_dir: Path, tmp_path
) -> None:
    """Batch scoring (`churnml score --engine spark`) with its features computed per customer partition on
    Spark: the same scores, tiers and reasons as with the DuckDB engine."""
    if shutil.which("java") is None:
        pytest.skip("PySpark needs a Java runtime and `java` is not on PATH (.ci/run installs one)")
    from churnml.config import Settings
    from churnml.data import load_dataset
    from churnml.engine import connect
    from churnml.features.batch import latest_date
    from churnml.features.spark import SparkFeatures, spark_session
    from churnml.score import RiskPolicy, score_and_explain, score_customers
    from churnml.spec import load_spec

    _, _, result = trained
    spark = spark_session("local[2]", tmp_path / "spark")
    try:
        with connect(Settings(home=tmp_path, duckdb_memory_limit="1GB")) as con:
            spec = load_spec(sim_dir / "spec.yaml")
            tables = load_dataset(con, spec)
            as_of = latest_date(tables)
            here = score_customers(tables, spec, result.model, as_of, history=2)
            on_spark = score_customers(
                tables, spec, result.model, as_of, history=2, build=SparkFeatures(spark, 4)
            )
            # the model, its SHAP reasons and plays ran inside the customer partitions, not on the driver
            rows = on_spark.scores[["customer_id", "as_of"]].rename(columns={"as_of": "observation_date"})
            partitioned = score_and_explain(
                tables, rows, result.model, RiskPolicy(), 5, build=SparkFeatures(spark, 4)
            )
    finally:
        spark.stop()
    assert len(here.scores) > 500
    pd.testing.assert_frame_equal(on_spark.scores, here.scores)
    pd.testing.assert_frame_equal(on_spark.reasons, here.reasons)
    pd.testing.assert_frame_equal(on_spark.history, here.history)
    assert partitioned.partitions >= 2 and len(partitioned.explained) == len(rows)
    top = pd.Series([a.headline for a in partitioned.explained], index=rows["customer_id"])
    assert top.reindex(here.scores["customer_id"]).tolist() == here.scores["top_reason"].tolist()
