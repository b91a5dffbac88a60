"""Training commands: train (on one machine, with a Dask cluster or a shared Optuna study) and promote."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.table import Table

from churnml.cli.common import (
    DataOpt,
    EngineOpt,
    StorageOpt,
    app,
    console,
    err_console,
    fail,
    load_settings,
    progress_bar,
    read_spec,
    validated_data,
)
from churnml.cli.data import check_engine, feature_builder
from churnml.config import Settings
from churnml.features.batch import training_table
from churnml.features.sets import FeatureSet
from churnml.spec import DatasetSpec

if TYPE_CHECKING:  # imported when training runs: the CLI starts without MLflow
    from mlflow.tracking import MlflowClient

    from churnml.modeling import TrainConfig, TuningRun


@app.command("train")
def train_command(
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Dataset spec (YAML): behaviour data, out-of-time test.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Training config YAML (default: built-in defaults).")
    ] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials (overrides the config).")] = None,
    timeout: Annotated[float | None, typer.Option(min=1, help="Tuning time limit in seconds.")] = None,
    data: DataOpt = None,
    table_path: Annotated[
        Path | None,
        typer.Option("--table", help="A ready feature table (CSV/Parquet, one row per customer)."),
    ] = None,
    target: Annotated[str | None, typer.Option(help="With --table: the churn label column.")] = None,
    positive: Annotated[
        str | None,
        typer.Option(help="With --table: the label value that means churn, for any two-valued label."),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option("--id", help="With --table: the customer id column (default: the row number)."),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="With --table: cross-validation folds.")] = 5,
    keep_column: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-column", help="Keep this column although the leak guard finds it leaks (repeatable)."
        ),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(
            "--study",
            help="Optuna study to continue (created if new) in $CHURNML_HOME/optuna.db: adds --trials trials "
            "to its earlier ones, e.g. after an interrupted run. Default: a new study per run. On a "
            "--storage server the study is shared: `churnml tune-worker --study NAME` joins it, and "
            "--trials is the study's total.",
        ),
    ] = None,
    storage: StorageOpt = None,
    engine: EngineOpt = None,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            help="Fit the final model on this Dask scheduler (tcp://host:8786) with lightgbm.dask "
            "(default: $CHURNML_DASK_SCHEDULER, else here).",
        ),
    ] = None,
) -> None:
    """Tune, calibrate and evaluate; log to MLflow; register as churn@challenger.

    With --spec: features from behaviour and an out-of-time test. With --table/--target [--id]: a ready
    feature table, tuned by stratified cross-validation and tested on held-out customers.
    """
    if (spec is None) == (table_path is None):
        raise fail("give either --spec FILE or --table FILE --target COL [--id COL]")
    if table_path is not None and not target:
        raise fail("--table needs --target COL (the churn label column)")
    setup = train_setup(config, trials, timeout, storage)
    engine = check_engine(engine, setup.settings)
    keep = tuple(keep_column or ())
    with _dask_fit(dask or setup.settings.dask_scheduler, setup.settings) as fit:
        _train_command(
            setup, spec, data, table_path, target, positive, id_column, folds, keep, study, fit, engine
        )


@contextmanager
def _dask_fit(address: str | None, settings: Settings) -> Iterator[object]:
    """A connection to the Dask cluster the final model is fitted on (None: fit here)."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client

        from churnml.modeling.distributed import DaskFit
    except ImportError:
        raise fail("--dask needs the 'distributed' extra: pip install 'churnml[distributed]'") from None
    try:
        client = Client(address, timeout=30)
    except OSError as err:
        raise fail(f"--dask: the Dask scheduler {address} is not reachable: {err}") from None
    with client:
        yield DaskFit(client, settings.dask_lightgbm_port, settings.dask_timeout)


def _train_command(setup: _TrainSetup, spec: Path | None, data: Path | None, table_path: Path | None,
                   target: str | None, positive: str | None, id_column: str | None, folds: int,
                   keep: tuple[str, ...], study: str | None, fit, engine: str | None = None) -> None:  # noqa: ANN001 # fmt: skip
    """`churnml train` once its options are checked: on a ready table, or on a spec's behaviour data."""
    from churnml.modeling import load_snapshot_table, train_snapshot
    from churnml.registry import log_training

    settings, cfg = setup.settings, setup.cfg
    if table_path is not None:
        try:
            table, fs = load_snapshot_table(table_path, target or "", id_column, positive)
        except ValueError as err:
            raise fail(str(err)) from None
        with err_console.status(f"tuning with {folds}-fold cross-validation ({cfg.trials} trials)"):
            try:
                source = {"table": str(table_path.resolve()), "target": target, "id": id_column,
                          "positive": positive, "folds": folds, "keep": list(keep)}  # fmt: skip
                tuning = setup.tuning_run(study or f"{table_path.stem}-{int(time.time())}", source)
                result = train_snapshot(table, fs, cfg, folds, tuning, id_column, keep, fit)
            except (ValueError, RuntimeError, TimeoutError) as err:
                raise fail(str(err)) from None
        logged = log_training(result, table, cfg, settings, table_path.stem, setup.client)
        _report_training(result, logged, cfg, setup.uri)
        return
    loaded = read_spec(spec, data)  # type: ignore[arg-type]
    with (
        feature_builder(engine, settings) as build, validated_data(loaded, settings) as tables,
        err_console.status("building the training table"),
    ):  # fmt: skip
        table, fs = training_table(tables, loaded, build=build)
    table = _without_plays_success(table, settings, loaded.observation.horizon_days)
    source = {"spec": str(spec.resolve()), "data": str(data.resolve()) if data else None, "keep": list(keep)}  # type: ignore[union-attr]
    train_on_spec(setup, loaded, table, fs, study, keep, source, fit)


def _without_plays_success(table: pd.DataFrame, settings: Settings, horizon_days: int) -> pd.DataFrame:
    """The training rows without the treated accounts' and with the held-out ones weighted, when the CSM
    store has holdouts (`churnml.impact.training`); a store that does not exist yet is not created."""
    from churnml.impact.training import untreated_rows
    from churnml.workspace.holdouts import read_holdouts
    from churnml.workspace.store import open_store

    if settings.database_url is None and not (settings.home / "csm.db").is_file():
        return table
    store = open_store(settings.store_url)
    try:
        assignments = read_holdouts(store)
    finally:
        store.close()
    if assignments.empty:
        return table
    rows = untreated_rows(table, assignments, horizon_days)
    console.print(rows.describe(), highlight=False)
    return rows.table


@dataclass(frozen=True)
class _TrainSetup:
    """What training needs before any expensive work: settings, the config, a reachable tracking store."""

    settings: Settings
    cfg: TrainConfig
    client: MlflowClient
    uri: str
    storage: str  # the Optuna storage URL

    def tuning_run(self, study: str, source: dict, on_trial=None) -> TuningRun:  # noqa: ANN001
        """One machine's study (SQLite), or a shared one on a database server that workers join."""
        if not self.storage.startswith("sqlite"):
            err_console.print(f"Optuna study {study!r} is shared: `churnml tune-worker --study {study}` "
                              "joins it from other machines", highlight=False)  # fmt: skip
        return tuning_run(self.settings, self.storage, study, self.cfg, source, on_trial=on_trial)


def storage_url(storage: str | None, settings: Settings) -> str:
    from churnml.modeling.studies import normalise_storage_url

    try:
        return normalise_storage_url(storage or settings.study_storage,
                                     "--storage" if storage else "CHURNML_OPTUNA_STORAGE")  # fmt: skip
    except ValueError as err:
        raise fail(str(err)) from None


def tuning_run(settings: Settings, url: str, study: str, cfg: TrainConfig, source: dict,
                seed: int | None = None, on_trial=None) -> TuningRun:  # noqa: ANN001 # fmt: skip
    """On SQLite a run adds its trials to the study; on a server the study is shared, with a budget of
    ``cfg.trials``, heartbeats, and what workers need to rebuild the tuned rows (``source``)."""
    from churnml.modeling import TuningRun
    from churnml.modeling.studies import Heartbeat

    if url.startswith("sqlite"):
        return TuningRun(url, study, on_trial)
    heartbeat = Heartbeat(settings.optuna_heartbeat, settings.optuna_grace)
    source = {**source, "config": cfg.model_dump(mode="json")}
    return TuningRun(url, study, on_trial, heartbeat, cfg.trials, cfg.seed if seed is None else seed, source)


def train_setup(
    config: Path | None, trials: int | None, timeout: float | None, storage: str | None = None
) -> _TrainSetup:
    from churnml.modeling import load_train_config
    from churnml.registry import check_tracking_server, close_unfinished_runs, tracking_uri

    settings = load_settings()
    try:
        cfg = load_train_config(config)
    except ValueError as err:
        raise fail(str(err)) from None
    cfg = cfg.model_copy(
        update={k: v for k, v in {"trials": trials, "timeout_seconds": timeout}.items() if v}
    )
    uri = tracking_uri(settings)
    try:  # before any expensive work
        client = check_tracking_server(uri)
    except RuntimeError as err:
        raise fail(str(err)) from None
    for run_id in close_unfinished_runs(client, settings):
        console.print(f"marked MLflow run {run_id} FAILED (left open by an earlier failure)", highlight=False)
    return _TrainSetup(settings, cfg, client, uri, storage_url(storage, settings))


def train_on_spec(
    setup: _TrainSetup,
    loaded: DatasetSpec,
    table: pd.DataFrame,
    fs: FeatureSet,
    study: str | None,
    keep: tuple[str, ...] = (),
    source: dict | None = None,
    fit=None,  # noqa: ANN001 - a DaskFit (the optional 'distributed' extra)
) -> None:
    """Tune, evaluate, log and register a model on a spec's labelled feature table."""
    from churnml.modeling import spec_task, train_model
    from churnml.registry import log_training

    cfg = setup.cfg
    with progress_bar() as progress:
        task = progress.add_task("tuning (optuna trials)", total=cfg.trials)
        try:
            task_ = spec_task(loaded, keep)
            tuning = setup.tuning_run(study or f"{loaded.name}-{int(time.time())}", source or {},
                                      lambda done, total: progress.update(task, completed=done))  # fmt: skip
            result = train_model(table, fs, task_, cfg, tuning, fit)
        except (ValueError, RuntimeError, TimeoutError) as err:
            raise fail(str(err)) from None
    logged = log_training(result, table, cfg, setup.settings, loaded.name, setup.client)
    _report_training(result, logged, cfg, setup.uri)


def _report_training(result, logged: tuple[str, str], cfg, uri: str) -> None:  # noqa: ANN001
    run_id, version = logged
    for leak in result.leaks:  # the leak guard's findings, before the figures they would have inflated
        err_console.print(f"[yellow]WARNING[/] leak guard: {leak.message()}", highlight=False)
    metrics = Table(title=f"Evaluation: {result.evaluation_description}")
    keys = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "log_loss": "log loss", "brier": "Brier", "ece": "ECE",
            "lift_top_decile": "lift@10%", f"revenue_captured_top_{cfg.capacity}": f"MRR@{cfg.capacity}"}  # fmt: skip
    metrics.add_column("model", no_wrap=True)
    for header in keys.values():
        metrics.add_column(header, justify="right", no_wrap=True)
    rows = {"churnml": result.test_metrics, **result.baselines}
    if result.cv_metrics:
        rows["churnml (cross-validation)"] = result.cv_metrics
    for name, values in rows.items():
        metrics.add_row(name, *(f"{values.get(k, float('nan')):.3f}" for k in keys))
        if name == "churnml" and result.test_intervals:  # how far the test set can resolve the figures
            ci = result.test_intervals
            metrics.add_row(
                "  95% interval", *(f"{ci[k][0]:.3f}-{ci[k][1]:.3f}" if k in ci else "" for k in keys)
            )
    console.print(metrics)
    console.print(f"MLflow run {run_id} at {uri}; registered churn v{version} as challenger", highlight=False)


@app.command("promote")
def promote_command(
    metric: Annotated[str | None, typer.Option(help="Metric to compare (default: the config's).")] = None,
    margin: Annotated[float | None, typer.Option(min=0, help="Required improvement.")] = None,
    config: Annotated[Path | None, typer.Option(help="Training config YAML.")] = None,
) -> None:
    """Make the challenger champion if it beats the champion on the same out-of-time rows."""
    from churnml.evaluate import comparable_metric
    from churnml.modeling import load_train_config
    from churnml.registry import (
        check_tracking_server,
        close_unfinished_runs,
        promote_challenger,
        promotion_lock,
        tracking_uri,
    )

    settings = load_settings()
    try:
        cfg = load_train_config(config)
        metric = metric or cfg.promotion_metric
        comparable_metric(metric)  # before any registry call
        client = check_tracking_server(tracking_uri(settings))
        close_unfinished_runs(client, settings)
        with promotion_lock(settings.home / ".churnml-promote.lock"):
            result = promote_challenger(client, metric, cfg.promotion_margin if margin is None else margin)
    except (RuntimeError, ValueError) as err:
        raise fail(str(err)) from None
    verb = "promoted" if result.promoted else "kept"
    console.print(
        f"{verb}: champion v{result.champion_after} (was v{result.champion_before}), challenger v{result.challenger}; "
        f"{result.metric}: challenger {result.challenger_score}, champion {result.champion_score}; {result.reason}",
        highlight=False,
    )
