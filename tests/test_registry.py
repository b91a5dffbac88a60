from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from churnml.config import Settings
from churnml.modeling import TrainConfig, TrainTask, holdout_mask, train_model
from churnml.registry import MODEL_NAME, check_tracking_server, load_model, log_training, promote_challenger


@pytest.fixture
def store(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = check_tracking_server(uri)
    yield client, Settings(home=tmp_path)
    mlflow.set_tracking_uri(None)


def _loads_where_churnml_is_not_installed(rows: pd.DataFrame, expected: np.ndarray, tmp_path: Path) -> None:
    """The registered model carries the churnml package and its pinned requirements."""
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@challenger", dst_path=str(tmp_path / "m"))
    )
    pins = (local / "requirements.txt").read_text()
    assert all(f"{name}==" in pins for name in ("lightgbm", "duckdb", "pandas", "scikit-learn")), pins
    rows.to_parquet(tmp_path / "rows.parquet")
    script = (
        "import importlib.util, json, sys\n"
        "sys.path = [p for p in sys.path if not p.rstrip('/').endswith('/src')]\n"
        "assert importlib.util.find_spec('churnml') is None, 'churnml is importable before the load'\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "print(json.dumps(model.predict(pd.read_parquet(sys.argv[2]))['churn_probability'].tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, str(local), str(tmp_path / "rows.parquet")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(json.loads(done.stdout.strip().splitlines()[-1]), expected)


def test_training_run_is_logged_registered_and_promoted(trained, store, tmp_path: Path) -> None:
    table, _, result = trained
    client, settings = store
    run_id, version = log_training(result, table, TrainConfig(trials=4), settings, "sim", client)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result.test_metrics["roc_auc"])
    # the test set's resolution travels with the figures
    low, high = run.data.metrics["test_pr_auc_ci95_low"], run.data.metrics["test_pr_auc_ci95_high"]
    assert (low, high) == pytest.approx(result.test_intervals["pr_auc"])
    assert low < result.test_metrics["pr_auc"] < high
    assert "baseline_logistic_regression_pr_auc" in run.data.metrics and run.data.params["calibration"]
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for folder in ("plots", "tuning", "evaluation") for a in client.list_artifacts(run_id, folder)
    }
    for expected in ("feature_catalogue.csv", "plots/roc.png", "plots/pr.png", "plots/calibration.png",
                     "plots/lift.png", "plots/shap_summary.png", "tuning/optuna_trials.csv",
                     "evaluation/test_features.parquet"):  # fmt: skip
        assert expected in artifacts, expected
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "test"} and inputs["training"].digest != inputs["test"].digest
    test_dates = table["observation_date"].isin(pd.to_datetime(result.model.metadata["test_dates"]))
    assert json.loads(inputs["test"].profile)["num_rows"] == test_dates.sum()
    trained = table["observation_date"] <= pd.Timestamp(result.model.metadata["trained_through"])
    assert json.loads(inputs["training"].profile)["num_rows"] == trained.sum() < (~test_dates).sum()
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == version

    # the registered model round-trips: native model and the MLflow pyfunc agree with the trained one
    rows = table.tail(50)
    native = load_model(f"models:/{MODEL_NAME}@challenger", client)
    np.testing.assert_allclose(native.predict_proba(rows), result.model.predict_proba(rows))
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@challenger")
    out = pyfunc.predict(rows[native.feature_names])
    np.testing.assert_allclose(out["churn_probability"].to_numpy(), result.model.predict_proba(rows))
    _loads_where_churnml_is_not_installed(
        rows[native.feature_names], result.model.predict_proba(rows), tmp_path
    )

    first = promote_challenger(client, "pr_auc", 0.005)
    assert first.promoted and first.champion_after == version and "first model" in first.reason

    # a second, identical model does not beat the champion by the margin: champion stays
    _, second = log_training(result, table, TrainConfig(trials=4), settings, "sim", client)
    kept = promote_challenger(client, "pr_auc", 0.005)
    assert not kept.promoted and kept.champion_after == version and kept.challenger == second
    assert kept.challenger_score == pytest.approx(kept.champion_score)
    # identical predictions are never strictly better on a paired resample
    assert "better in 0% of paired bootstrap resamples" in kept.reason, kept.reason
    # with no margin required and a lower-is-better metric the tie still does not promote
    assert not promote_challenger(client, "log_loss", 0.0).promoted
    # MRR captured at any capacity; an unknown metric is refused before the registry is touched
    revenue = promote_challenger(client, "revenue_captured_top_50", 0.0)
    assert not revenue.promoted and revenue.challenger_score > 0
    assert revenue.challenger_score == pytest.approx(revenue.champion_score)
    with pytest.raises(ValueError, match="'accuracy' is unknown; expected one of roc_auc"):
        promote_challenger(client, "accuracy")
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == version


def test_a_failed_training_run_leaves_the_champion_alone(
    trained, store, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, _, result = trained
    client, settings = store
    _, version = log_training(result, table, TrainConfig(trials=4), settings, "sim", client)
    promote_challenger(client)
    broken = table.drop(columns=["login_count_30d"])  # the model cannot be evaluated on it
    with pytest.raises(Exception):  # noqa: B017 - any failure will do
        log_training(result, broken, TrainConfig(trials=4), settings, "sim", client)
    runs = client.search_runs(
        [client.get_experiment_by_name("churnml").experiment_id], order_by=["start_time DESC"]
    )
    assert runs[0].info.status == "FAILED"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == version
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == version

    # a scheduler's SIGTERM mid-logging: the run is marked FAILED, not left RUNNING; no new challenger
    def terminated(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives here

    monkeypatch.setattr("churnml.registry.plots.shap_summary", terminated)
    with pytest.raises(SystemExit):
        log_training(result, table, TrainConfig(trials=4), settings, "sim", client)
    monkeypatch.undo()
    latest = client.search_runs([runs[0].info.experiment_id], order_by=["start_time DESC"])[0]
    assert latest.info.status == "FAILED" and latest.info.run_id != runs[0].info.run_id
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == version

    # a failure after the model is registered (its last step) still names no new challenger
    def broken_tag(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("registry went away")

    monkeypatch.setattr(client, "set_model_version_tag", broken_tag)
    with pytest.raises(RuntimeError, match="registry went away"):
        log_training(result, table, TrainConfig(trials=4), settings, "sim", client)
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == 2  # registered, never aliased
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == version
    assert promote_challenger(client).reason == "challenger is already champion"


def test_unreachable_tracking_server_fails_fast() -> None:
    began = time.perf_counter()
    with pytest.raises(RuntimeError, match="not reachable"):
        check_tracking_server("http://127.0.0.1:9")
    assert time.perf_counter() - began < 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_train_and_promote_against_a_real_mlflow_server(tmp_path: Path, trained) -> None:
    table, _, result = trained
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                client = check_tracking_server(uri)
                break
            except RuntimeError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        run_id, version = log_training(
            result, table, TrainConfig(trials=4), Settings(home=tmp_path), "sim", client
        )
        assert promote_challenger(client).promoted
        assert str(MlflowClient(uri).get_model_version_by_alias(MODEL_NAME, "champion").version) == version
        model = load_model(f"models:/{MODEL_NAME}@champion", client)
        np.testing.assert_allclose(
            model.predict_proba(table.tail(20)), result.model.predict_proba(table.tail(20))
        )
        assert not (tmp_path / "mlruns").exists()  # artifacts went through the server, not a local folder
    finally:
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(None)


def test_held_out_models_of_a_spec_and_of_a_table_are_not_compared() -> None:
    """Both test on held-out customers, but chosen apart (the table's by its id column and share): the
    champion may have trained on the challenger's test customers."""
    from churnml.registry.promotion import _held_out_mismatch

    spec = {"mode": "spec", "evaluation": "customers", "table_holdout": 0.2}
    table = {"mode": "table", "evaluation": "customers", "table_holdout": 0.2, "id_column": "id"}
    assert "trained on a ready table (--table) and the champion on behaviour (--spec)" in _held_out_mismatch(
        table, spec
    )
    assert "challenger was trained on behaviour" in _held_out_mismatch(spec, table)
    assert _held_out_mismatch(table, dict(table)) is None and _held_out_mismatch(spec, dict(spec)) is None


def test_promote_compares_only_models_evaluated_the_same_way(trained, store) -> None:
    """A model tested on held-out customers trained on every labelled date (the other's test date too);
    one tested out of time trained on every customer (the other's held-out ones too): neither can be
    compared on the other's test rows. The run says how its model was evaluated."""
    table, fs, timed = trained
    client, settings = store
    log_training(timed, table, TrainConfig(trials=4), settings, "sim", client)
    assert promote_challenger(client).promoted
    held_out = train_model(table, fs, TrainTask(60, 90, evaluation="customers"),
                           TrainConfig(trials=2))  # fmt: skip
    run_id, version = log_training(held_out, table, TrainConfig(trials=2), settings, "sim", client)
    run = client.get_run(run_id)
    assert run.data.tags["churnml.evaluation"] == "customers" and run.data.params["evaluation"] == "customers"
    assert "held-out customers" in run.data.tags["churnml.evaluation_description"]
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    held = holdout_mask(table["customer_id"], 0.2)
    assert json.loads(inputs["training"].profile)["num_rows"] == (~held).sum()  # every date, other customers
    assert json.loads(inputs["test"].profile)["num_rows"] == len(held_out.test_frame)
    kept = promote_challenger(client, "pr_auc", 0.0)
    assert not kept.promoted and kept.challenger == version
    assert "challenger was evaluated on held-out customers and the champion out of time" in kept.reason
    # two models evaluated on the same held-out customers compare
    _, third = log_training(held_out, table, TrainConfig(trials=2), settings, "sim", client)
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    same = promote_challenger(client, "pr_auc", 0.0)
    assert same.challenger == third and "better in 0% of paired bootstrap resamples" in same.reason
