from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from churnml.cli import app
from churnml.data import load_dataset
from tests.conftest import free_port

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHURNML_HOME", str(tmp_path))
    monkeypatch.setenv("CHURNML_DUCKDB_MEMORY_LIMIT", "1GB")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_simulate_validate_labels(home: Path) -> None:
    out = home / "sim"
    result = runner.invoke(
        app, ["simulate", "--customers", "400", "--months", "8", "--seed", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "simulated 400 customers" in result.output
    assert (out / "events.parquet").is_file() and (out / "ground_truth.parquet").is_file()

    result = runner.invoke(app, ["validate", "--spec", str(out / "spec.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "events" in result.output

    labels_path = home / "labels.parquet"
    result = runner.invoke(app, ["labels", "--spec", str(out / "spec.yaml"), "--out", str(labels_path)])
    assert result.exit_code == 0, result.output
    labels = pd.read_parquet(labels_path)
    assert set(labels.columns) >= {"customer_id", "observation_date", "churned"}
    assert labels["churned"].notna().all() and len(labels) > 400


def test_validate_reports_errors_and_exits_1(home: Path) -> None:
    out = home / "sim"
    assert (
        runner.invoke(app, ["simulate", "--customers", "50", "--months", "4", "--out", str(out)]).exit_code
        == 0
    )
    customers = pd.read_parquet(out / "customers.parquet")
    pd.concat([customers, customers.head(2)]).to_parquet(out / "customers.parquet")
    result = runner.invoke(app, ["validate", "--spec", str(out / "spec.yaml")])
    assert result.exit_code == 1
    assert "2 customer_id value(s) appear more than once" in result.output
    assert "nothing was run" in result.output


def test_validate_prints_what_each_event_value_means_and_where_it_came_from(home: Path) -> None:
    """Declared in the spec, known to the vocabulary, or inferred from the values (and said so)."""
    from tests.conftest import tiny_customers, tiny_events, tiny_spec_dict, tiny_subscriptions

    extra = pd.DataFrame({
        "cust": ["a"] * 9, "ts": pd.date_range("2024-02-01", periods=9, freq="D"),
        "kind": ["webinar"] * 3 + ["rating"] * 3 + ["seat_delta"] * 3,
        "val": [10.5, 45.25, 3.0, 1.0, 4.0, 5.0, -2.0, 3.0, 1.0],
    })  # fmt: skip
    pd.concat([tiny_events(), extra], ignore_index=True).to_parquet(home / "events.parquet")
    tiny_customers().to_parquet(home / "customers.parquet")
    tiny_subscriptions().to_parquet(home / "subscriptions.parquet")
    spec = tiny_spec_dict() | {"event_values": {"nps_response": {"meaning": "score", "scale": [0, 5]}}}
    (home / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["validate", "--spec", str(home / "spec.yaml")], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 4}
    assert "amount" in lines["webinar"] and "inferred" in lines["webinar"]
    assert "score 1-5" in lines["rating"] and "inferred" in lines["rating"]
    assert "quantity" in lines["seat_delta"] and "inferred" in lines["seat_delta"]
    assert "none" in lines["login"] and "built-in vocabulary" in lines["login"]
    assert "score 1-5" in lines["support_ticket"] and "built-in vocabulary" in lines["support_ticket"]
    # the spec's declaration wins, and the data that contradicts it is named
    assert "score 0-5" in lines["nps_response"] and "the spec" in lines["nps_response"]
    assert "values run from 9 to 9" in result.output


def test_bad_spec_and_missing_data_exit_2_with_a_message(home: Path) -> None:
    spec = home / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "x"}))
    result = runner.invoke(app, ["validate", "--spec", str(spec)])
    assert result.exit_code == 2 and "source: Field required" in result.output

    out = home / "sim"
    runner.invoke(app, ["simulate", "--customers", "50", "--months", "4", "--out", str(out)])
    (out / "events.parquet").unlink()
    result = runner.invoke(app, ["validate", "--spec", str(out / "spec.yaml")])
    assert result.exit_code == 2 and "events.parquet does not exist" in result.output


def test_simulate_rejects_bad_arguments(home: Path) -> None:
    result = runner.invoke(app, ["simulate", "--months", "1"])
    assert result.exit_code == 2 and "--months" in result.output
    result = runner.invoke(app, ["simulate", "--start", "yesterday"])
    assert result.exit_code == 2 and "expected a date YYYY-MM-DD" in result.output


def test_console_entry_point_runs_the_main_job(tmp_path: Path) -> None:
    exe = shutil.which("churnml", path=str(Path(sys.executable).parent))
    assert exe, "the churnml console script is installed with the package"
    env = {**os.environ, "CHURNML_HOME": str(tmp_path), "CHURNML_DUCKDB_MEMORY_LIMIT": "1GB"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env |= {"BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [exe, "run", "--customers", "500", "--months", "12", "--trials", "2", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 300
        while True:  # the main job ends by serving: wait until the service is ready
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        body = {"customers": [{"customer_id": "demo", "events": [{"timestamp": "2025-06-01T10:00:00",
                                                                  "event_type": "login"}]}]}  # fmt: skip
        r = httpx.post(f"http://127.0.0.1:{port}/explain", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["explanations"][0]["reasons"], r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    output = log.read_text()
    assert (tmp_path / "data" / "labels" / "simulated.parquet").is_file()
    assert "Labels (cancellation churn" in output
    assert (tmp_path / "data" / "features" / "simulated.parquet").is_file()
    assert "registered churn v1 as challenger" in output and "promoted: champion v1" in output
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    assert "scored" in output and (tmp_path / "reports" / "workspace.duckdb").is_file()
    from churnml.registry import check_tracking_server, load_model

    client = check_tracking_server(f"sqlite:///{tmp_path / 'mlflow.db'}")
    meta = load_model("models:/churn@champion", client).metadata
    # cancellation labels wait out the 30-day grace: training ends horizon + grace before the test date
    gap = pd.Timestamp(meta["test_dates"][0]) - pd.Timestamp(meta["trained_through"])
    assert gap >= pd.Timedelta(days=60 + 30), meta


def test_features_training_and_scoring_tables(home: Path) -> None:
    out = home / "sim"
    assert (
        runner.invoke(app, ["simulate", "--customers", "300", "--months", "8", "--out", str(out)]).exit_code
        == 0
    )
    train = home / "train.parquet"
    result = runner.invoke(app, ["features", "--spec", str(out / "spec.yaml"), "--out", str(train)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(train)
    catalogue = pd.read_csv(home / "train.catalogue.csv")
    assert {"customer_id", "observation_date", "churned"} <= set(table.columns)
    assert set(catalogue["name"]) <= set(table.columns) and len(catalogue) > 50
    assert table["observation_date"].nunique() > 1

    score = home / "score.parquet"
    result = runner.invoke(
        app, ["features", "--spec", str(out / "spec.yaml"), "--out", str(score), "--as-of", "latest"]
    )
    assert result.exit_code == 0, result.output
    scoring = pd.read_parquet(score)
    assert scoring["observation_date"].nunique() == 1 and "churned" not in scoring.columns
    assert list(scoring.columns[2:]) == list(catalogue["name"])

    result = runner.invoke(
        app, ["features", "--spec", str(out / "spec.yaml"), "--out", str(score), "--as-of", "soon"]
    )
    assert result.exit_code == 2 and "expected a date YYYY-MM-DD or 'latest'" in result.output


def test_train_on_a_ready_table_registers_a_model(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    n = 600
    usage = rng.random(n)
    frame = pd.DataFrame({"account": [f"A{i}" for i in range(n)], "usage": usage,
                          "tier": rng.choice(["gold", "silver"], n),
                          "left": np.where(rng.random(n) < 0.6 - 0.5 * usage, "yes", "no")})  # fmt: skip
    frame.to_csv(home / "accounts.csv", index=False)
    args = [
        "train",
        "--table",
        str(home / "accounts.csv"),
        "--target",
        "left",
        "--id",
        "account",
        "--trials",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5-fold cross-validation" in result.output and "registered churn v1 as challenger" in result.output
    assert runner.invoke(app, ["train", "--table", str(home / "accounts.csv")]).exit_code == 2
    result = runner.invoke(app, ["promote"])
    assert result.exit_code == 0 and "promoted: champion v1" in result.output
    result = runner.invoke(app, ["promote", "--metric", "accuracy"])
    assert result.exit_code == 2 and "promotion metric 'accuracy' is unknown" in result.output
    assert "Traceback" not in result.output
    # a named study is continued by the next run on the same table
    for _ in range(2):
        assert runner.invoke(app, [*args, "--study", "accounts-tuning"]).exit_code == 0
    study = optuna.load_study(study_name="accounts-tuning", storage=f"sqlite:///{home / 'optuna.db'}")
    assert len(study.trials) == 4
    # without --id, a column with a distinct value per row is refused as a feature (it would memorise rows)
    no_id = [*args[:5], "--trials", "2"]
    result = runner.invoke(app, no_id)
    assert result.exit_code == 2 and "accounts.csv.account: one distinct value per row" in result.output
    # ...and without it the row number is the id; the test is a fifth of the rows, held out
    frame.drop(columns=["account"]).to_csv(home / "accounts.csv", index=False)
    result = runner.invoke(app, no_id)
    assert result.exit_code == 0 and "registered churn v4 as challenger" in result.output, result.output
    assert re.search(r"1\d\d held-out customers \(20% by row number\)", result.output), result.output
    # the champion held out other customers (by account id): no fair comparison, it stays
    result = runner.invoke(app, ["promote"])
    assert result.exit_code == 0 and "kept: champion v1" in result.output, result.output
    assert "held out customers by another id_column" in result.output
    result = runner.invoke(app, [*no_id, "--study", "accounts-tuning"])
    assert result.exit_code == 2 and "was run on other data" in result.output, result.output


def test_labels_reports_scheduled_dates_without_labels_yet(home: Path) -> None:
    """A date whose horizon runs past the data has no label yet: the summary says so (it crashed with
    'boolean value of NA is ambiguous')."""
    from tests.conftest import tiny_customers, tiny_events, tiny_spec_dict, tiny_subscriptions

    tiny_customers().to_parquet(home / "customers.parquet")
    tiny_events().to_parquet(home / "events.parquet")
    tiny_subscriptions().to_parquet(home / "subscriptions.parquet")
    spec = tiny_spec_dict()
    spec["observation"] |= {"start": "2024-02-01", "end": "2024-03-01"}
    (home / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = home / "labels.parquet"
    result = runner.invoke(app, ["labels", "--spec", str(home / "spec.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels = pd.read_parquet(out)
    assert labels["churned"].isna().any() and "unlabelled" in result.output


def test_the_main_job_validates_the_data_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """labels, features, training and scoring share one validated handle (each used to validate again)."""
    import churnml.cli.common

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    loads = []

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loads.append(args[1].name)
        return load_dataset(*args, **kwargs)

    monkeypatch.setattr(churnml.cli.common, "load_dataset", counted)
    result = runner.invoke(
        app, ["run", "--customers", "300", "--months", "12", "--trials", "1", "--no-serve"]
    )
    assert result.exit_code == 0, result.output
    assert "registered churn v1 as challenger" in result.output and "scored" in result.output
    assert loads == ["simulated-saas"]


def test_train_says_which_evaluation_it_used(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 39-week horizon on a short history fits no purged out-of-time fold: `train --spec` stopped with
    'no backtest fold fits'. It now holds out customers, and says so in its table."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = home / "sim"
    assert (
        runner.invoke(app, ["simulate", "--customers", "300", "--months", "18", "--out", str(out)]).exit_code
        == 0
    )
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    spec["observation"]["horizon_days"] = 273
    (out / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(
        app, ["train", "--spec", str(out / "spec.yaml"), "--trials", "1"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "Evaluation: held-out customers" in result.output and "registered churn v1" in result.output
    spec["evaluation"] = "time"
    (out / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["train", "--spec", str(out / "spec.yaml"), "--trials", "1"])
    assert result.exit_code == 2 and "no backtest fold fits" in result.output


def test_train_on_a_table_names_its_leaks_and_records_them(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A published credit-card table: a text label and two classifier outputs derived from it."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rng = np.random.default_rng(0)
    n = 1500
    usage = rng.normal(size=n)
    left = rng.random(n) < 1 / (1 + np.exp(-(1.3 * usage - 1.4)))
    score = np.clip(left * 0.9 + rng.normal(0, 0.04, n), 0, 1)
    pd.DataFrame({"CLIENTNUM": rng.permutation(n) + 700_000_000, "usage": usage,
                  "Attrition_Flag": np.where(left, "Attrited Customer", "Existing Customer"),
                  "Naive_Bayes_1": score, "Naive_Bayes_2": 1 - score}).to_csv(home / "bank.csv", index=False)  # fmt: skip
    args = ["train", "--table", str(home / "bank.csv"), "--target", "Attrition_Flag", "--id", "CLIENTNUM",
            "--trials", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert (
        result.exit_code == 2
        and "--positive VALUE (one of ['Attrited Customer', 'Existing Customer'])" in result.output
    )
    result = runner.invoke(app, [*args, "--positive", "Attrited Customer"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for column in ("Naive_Bayes_1", "Naive_Bayes_2"):
        assert f"column '{column}' alone separates the label (single-column ROC-AUC 1.000" in result.output
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("churnml").experiment_id])[0]
    assert run.data.tags["churnml.leaks_left_out"] == "Naive_Bayes_1,Naive_Bayes_2"
    assert run.data.params["n_features"] == "1"
    result = runner.invoke(app, [*args, "--positive", "Attrited Customer", "--keep-column", "Naive_Bayes_2"])
    assert (
        result.exit_code == 0
        and "column 'Naive_Bayes_2'" in result.output
        and "kept (--keep-column)" in result.output
    )
    run = client.search_runs(
        [client.get_experiment_by_name("churnml").experiment_id], order_by=["start_time DESC"]
    )[0]
    assert run.data.tags["churnml.leaks_kept"] == "Naive_Bayes_2" and run.data.params["n_features"] == "2"
