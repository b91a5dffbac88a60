"""One MLflow run per training: what it logs, and runs a crash or outage left open marked FAILED."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from churnml.config import Settings
from churnml.features.btyd import with_fitted_columns
from churnml.features.catalogue import catalogue_frame
from churnml.model import ChurnModel
from churnml.modeling import TrainConfig, TrainResult, holdout_mask
from churnml.registry import plots
from churnml.registry.tracking import MODEL_NAME, experiment_id

__all__ = ["close_unfinished_runs", "log_training"]

log = logging.getLogger(__name__)
_PACKAGE = Path(__file__).resolve().parent.parent  # churnml: its code travels with the logged model


def _requirements() -> list[str]:
    """churnml's own pinned dependencies (extras excluded): what the logged model's code imports."""
    return [r for r in importlib.metadata.requires("churnml") or [] if "extra ==" not in r]


def log_training(
    result: TrainResult,
    table: pd.DataFrame,
    config: TrainConfig,
    settings: Settings,
    dataset_name: str,
    client: MlflowClient,
) -> tuple[str, str]:
    """Log one training run and register its model as a new ``churn`` version aliased ``challenger``.

    Returns (run_id, model version).
    """
    mlflow.set_tracking_uri(client.tracking_uri)
    experiment = experiment_id(client, settings)
    if "observation_date" in result.test_frame:  # the test rows: (customer, date) pairs
        keys = ["customer_id", "observation_date"]
        test_features = table.merge(result.test_frame[keys], on=keys, how="inner").reset_index(drop=True)
    else:  # a snapshot table: its held-out customers
        test_features = table[table["customer_id"].isin(result.test_frame["customer_id"])].reset_index(
            drop=True
        )
    fs = result.model.feature_set  # the columns fitted at training (BG/NBD), beside the table's own
    test_features = with_fitted_columns(test_features, fs.btyd, fs.btyd_horizon_days)
    run = mlflow.start_run(experiment_id=experiment, run_name=f"train-{dataset_name}")
    try:
        with _terminate_as_exit():
            run_id, version = _log_run(run, result, table, test_features, config, dataset_name, client)
    except BaseException:
        _end_failed_run(client, run.info.run_id, settings)
        raise
    mlflow.end_run()
    # only a run that finished names the challenger: promote never picks a half-logged model
    client.set_registered_model_alias(MODEL_NAME, "challenger", version)
    return run_id, version


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) raises SystemExit, so the run is marked FAILED, not left
    RUNNING forever. Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame) -> None:  # noqa: ANN001, ARG001
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _unclosed_runs_file(settings: Settings) -> Path:
    return settings.home / ".churnml-unclosed-runs"


def _end_failed_run(client: MlflowClient, run_id: str, settings: Settings) -> None:
    """Mark a failed run FAILED; if the tracking server is gone too, remember it for next time."""
    try:
        mlflow.end_run(status="FAILED")
    except Exception:  # noqa: BLE001 - the server is down: close the run when it is back
        log.warning("MLflow run %s could not be marked FAILED now; it will be at the next connection", run_id)
        with _unclosed_runs_file(settings).open("a") as f:
            f.write(f"{client.tracking_uri} {run_id}\n")
        while mlflow.active_run() is not None:  # forget it locally so a later run can start
            mlflow.tracking.fluent._active_run_stack.get().pop()


def close_unfinished_runs(client: MlflowClient, settings: Settings) -> list[str]:
    """Mark FAILED the runs a crash or outage left open (recorded by a failed training); return them."""
    path = _unclosed_runs_file(settings)
    if not path.is_file():
        return []
    closed, keep = [], []
    for line in path.read_text().splitlines():
        uri, _, run_id = line.partition(" ")
        if uri != client.tracking_uri:
            keep.append(line)
            continue
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, status="FAILED")
            closed.append(run_id)
        except MlflowException:
            keep.append(line)
    path.write_text("".join(f"{k}\n" for k in keep))
    return closed


def _training_rows(table: pd.DataFrame, model: ChurnModel, test_features: pd.DataFrame) -> pd.DataFrame:
    """The rows the final model was fitted on: development dates, or the customers not held out."""
    if model.metadata.get("evaluation", "time") == "time" and "observation_date" in table:
        return table[table["observation_date"] <= pd.Timestamp(model.metadata["trained_through"])]
    if "table_holdout" in model.metadata:  # every row of the customers not held out, at any date
        return table[~holdout_mask(table["customer_id"], float(model.metadata["table_holdout"]))]
    return table[~table["customer_id"].isin(test_features["customer_id"])]


def _log_run(run, result: TrainResult, table: pd.DataFrame, test_features: pd.DataFrame, config: TrainConfig,  # noqa: ANN001
             dataset_name: str, client: MlflowClient) -> tuple[str, str]:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _log_figures(result, table, config, dataset_name)
        _log_datasets(result.model, table, test_features, dataset_name)
        _log_artifacts(result, test_features, folder)
        version = _log_model(result.model, test_features, folder)
        client.set_model_version_tag(MODEL_NAME, version, "run_id", run.info.run_id)
        return run.info.run_id, version


def _log_figures(result: TrainResult, table: pd.DataFrame, config: TrainConfig, dataset_name: str) -> None:
    """Tags, parameters (LightGBM's, the config's, the model's) and metrics: test, CV, intervals, baselines."""
    model = result.model
    mlflow.set_tags({"dataset": dataset_name, "churnml.stage": "train", "churnml.evaluation": result.evaluation,
                     "churnml.evaluation_description": result.evaluation_description})  # fmt: skip
    mlflow.log_params({f"lgb.{k}": v for k, v in result.params.items()})
    mlflow.log_params({f"config.{k}": v for k, v in config.model_dump().items()})
    mlflow.log_params({
        "calibration": model.calibrator.method, "horizon_days": model.metadata.get("horizon_days"),
        "test_dates": ",".join(model.metadata.get("test_dates", [])), "n_features": len(model.feature_names),
        "rows": len(table), "evaluation": result.evaluation,
    })  # fmt: skip
    mlflow.log_metrics({f"test_{k}": v for k, v in result.test_metrics.items() if np.isfinite(v)})
    mlflow.log_metrics({f"cv_{k}": v for k, v in result.cv_metrics.items() if np.isfinite(v)})
    for k, (low, high) in result.test_intervals.items():
        mlflow.log_metrics({f"test_{k}_ci95_low": low, f"test_{k}_ci95_high": high})
    for name, metrics in result.baselines.items():
        mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in metrics.items() if np.isfinite(v)})


def _log_datasets(
    model: ChurnModel, table: pd.DataFrame, test_features: pd.DataFrame, dataset_name: str
) -> None:
    """The training and test rows as MLflow datasets, each with its own digest: two runs trained or
    tested on the same rows show the same one."""
    for context, rows in (("training", _training_rows(table, model, test_features)), ("test", test_features)):
        mlflow.log_input(
            mlflow.data.from_pandas(
                # float label: MLflow's schema inference warns about integer columns otherwise
                rows.drop(columns=["churn_date"], errors="ignore").astype({"churned": "float64"}),
                name=f"{dataset_name}-{context}",
                targets="churned",
            ),
            context=context,
        )


def _log_artifacts(result: TrainResult, test_features: pd.DataFrame, folder: Path) -> None:
    """The catalogue, plots, SHAP importance, trial history, the test table (promotion compares models on
    it), the leak findings and every metric as JSON."""
    model = result.model
    catalogue_frame(model.catalogue).to_csv(folder / "feature_catalogue.csv", index=False)
    mlflow.log_artifact(str(folder / "feature_catalogue.csv"))
    for path in plots.training_plots(result, folder):
        mlflow.log_artifact(str(path), artifact_path="plots")
    shap_path, importance = plots.shap_summary(model, test_features, folder)
    mlflow.log_artifact(str(shap_path), artifact_path="plots")
    importance.to_csv(folder / "shap_importance.csv", index=False)
    mlflow.log_artifact(str(folder / "shap_importance.csv"))
    result.study.trials_dataframe().to_csv(folder / "optuna_trials.csv", index=False)
    mlflow.log_artifact(str(folder / "optuna_trials.csv"), artifact_path="tuning")
    test_features.to_parquet(folder / "test_features.parquet", index=False)
    mlflow.log_artifact(str(folder / "test_features.parquet"), artifact_path="evaluation")
    _log_leaks(result, folder)
    metrics = {"test": result.test_metrics, "test_ci95": result.test_intervals,
               "cross_validation": result.cv_metrics, "baselines": result.baselines}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    mlflow.log_artifact(str(folder / "metrics.json"), artifact_path="evaluation")


def _log_model(model: ChurnModel, test_features: pd.DataFrame, folder: Path) -> str:
    """The model as an MLflow pyfunc with a signature and an input example, registered: its version."""
    model_dir = model.save(folder / "churn_model")
    example = test_features[model.feature_names].head(5).copy()
    for c in model.feature_names:  # floats (may be missing at serving time) and strings, never None
        if c in model.feature_set.categorical_columns:
            example[c] = example[c].fillna("").astype(str)
        else:
            example[c] = example[c].astype("float64")
    signature = infer_signature(example, pd.DataFrame({"churn_probability": model.predict_proba(example)}))
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(_PACKAGE / "mlflow_model.py"),
        artifacts={"churn_model": str(model_dir)},
        signature=signature, input_example=example, pip_requirements=_requirements(),
        code_paths=[str(_PACKAGE)],  # the churnml package travels with the model
    )  # fmt: skip
    return str(mlflow.register_model(info.model_uri, MODEL_NAME).version)


def _log_leaks(result: TrainResult, folder: Path) -> None:
    """What the leak guard left out or kept (tags), and each finding with its figure (an artifact)."""
    left_out = [leak.column for leak in result.leaks if not leak.kept]
    mlflow.set_tags({"churnml.leaks_left_out": ",".join(dict.fromkeys(left_out)) or "none",
                     "churnml.leaks_kept": ",".join(leak.column for leak in result.leaks if leak.kept) or "none"})  # fmt: skip
    (folder / "leaks.json").write_text(json.dumps([leak.to_dict() for leak in result.leaks], indent=1))
    mlflow.log_artifact(str(folder / "leaks.json"), artifact_path="evaluation")
