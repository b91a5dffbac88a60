"""The ``churnml`` command line: thin wrappers that read files, call the library and report."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churnml.config import Settings
from churnml.data import ContractTables, DataError, DataValidationError, ValidationReport, load_dataset
from churnml.engine import connect
from churnml.features.batch import FeatureBuilder, latest_date, scoring_rows, training_table
from churnml.features.catalogue import build_catalogue, catalogue_frame
from churnml.features.engine import build_features
from churnml.features.inference import infer_feature_set, resolve_event_values
from churnml.features.sets import FeatureSet
from churnml.labels import build_labels
from churnml.simulate import SimulationConfig, simulate
from churnml.spec import DatasetSpec, SpecError, load_spec

if TYPE_CHECKING:  # imported when training runs: the CLI starts without MLflow
    from mlflow.tracking import MlflowClient

    from churnml.modeling import TrainConfig, TuningRun

__all__ = ["app"]

app = typer.Typer(
    help="churnml: churn prediction from customer behaviour.", no_args_is_help=True, add_completion=False
)
# messages stay on one line (greppable, copyable); tables get room even when output is piped to a log
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
log = logging.getLogger("churnml")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # a tracking server that goes away should fail the command in seconds, not minutes of backoff
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _settings() -> Settings:
    """Settings from the environment; a malformed CHURNML_* variable is a usage error, not a traceback."""
    try:
        return Settings.from_env()
    except ValueError as err:
        raise _fail(str(err)) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )


def _load_spec(spec: Path, data: Path | None) -> DatasetSpec:
    try:
        loaded = load_spec(spec)
    except SpecError as err:
        raise _fail(str(err)) from None
    return loaded.with_source_path(data) if data else loaded


def _print_report(report: ValidationReport) -> None:
    table = Table(title="Validation", show_lines=False)
    for col in ("table", "rows read", "clean", "quarantined"):
        table.add_column(col, justify="right" if col != "table" else "left")
    for t in report.tables.values():
        table.add_row(t.table, f"{t.rows:,}", f"{t.clean:,}", f"{t.quarantined:,}")
    console.print(table)
    for issue in report.errors:
        console.print(f"[bold red]ERROR[/] {issue.message()}", highlight=False)
    for issue in report.quarantined:
        console.print(f"[yellow]QUARANTINED[/] {issue.message()}", highlight=False)
    for issue in report.warnings:
        console.print(f"[yellow]WARNING[/] {issue.message()}", highlight=False)
    for role, path in report.quarantine_files.items():
        console.print(f"quarantined {role} rows: {path}", highlight=False)


def _validate(spec: DatasetSpec, quarantine: Path | None, settings: Settings) -> ContractTables:
    """The validated contract tables (the report printed), or a clean exit naming what is wrong."""
    con = connect(settings)
    try:
        with err_console.status(f"validating {spec.name} against the data contract"):
            tables = load_dataset(con, spec, quarantine_dir=quarantine)
    except DataError as err:
        con.close()
        raise _fail(str(err)) from None
    except DataValidationError as err:
        con.close()
        _print_report(err.report)
        raise _fail(f"{len(err.report.errors)} error(s) in the data; nothing was run", code=1) from None
    assert tables.report is not None
    _print_report(tables.report)
    return tables


@contextmanager
def _validated_data(spec: DatasetSpec, settings: Settings) -> Iterator[ContractTables]:
    """Validated contract tables (validated once for every stage that reads them); library ValueErrors
    become clean CLI errors."""
    tables = _validate(spec, settings.data_dir / "quarantine" / spec.name, settings)
    try:
        yield tables
    except ValueError as err:
        raise _fail(str(err)) from None
    finally:
        tables.con.close()


SpecOpt = Annotated[Path, typer.Option("--spec", help="Dataset spec (YAML).", exists=False)]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Read the data from this folder/database instead of the spec's.")
]

EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="What computes the features: duckdb (this machine) or spark (customer partitions on "
        "$CHURNML_SPARK_MASTER, default local[2]). Default: $CHURNML_ENGINE, else duckdb.",
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna study database, e.g. postgresql://user:password@host/db (default: "
        "$CHURNML_OPTUNA_STORAGE, else $CHURNML_HOME/optuna.db).",
    ),
]


@app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/simulated"),
    customers: Annotated[int, typer.Option(min=1, help="Number of accounts.")] = 2_000,
    months: Annotated[int, typer.Option(min=3, max=120, help="Months of history.")] = 18,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    start: Annotated[
        str, typer.Option(help="First day of the simulated history (YYYY-MM-DD).")
    ] = "2024-01-01",
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    drift: Annotated[
        str | None, typer.Option(help="A drift scenario from --drift-month on: covariate or concept.")
    ] = None,
    drift_month: Annotated[
        int, typer.Option(min=1, help="Month the drift scenario starts (0 = the first).")
    ] = 12,
    plays: Annotated[
        bool, typer.Option(help="CSM plays each month, with a holdout; their true effects in plays.parquet.")
    ] = False,
    holdout_share: Annotated[
        float, typer.Option(help="With --plays: the share of the call list held out.")
    ] = 0.1,
) -> None:
    """Simulate a SaaS business with planted churn drivers (Parquet + spec.yaml + ground truth)."""
    try:
        start_date = dt.date.fromisoformat(start)
    except ValueError:
        raise _fail(f"--start: expected a date YYYY-MM-DD, got {start!r}") from None
    try:
        config = SimulationConfig(customers=customers, months=months, seed=seed, start=start_date, drift=drift,
                                  drift_month=drift_month, plays=plays, holdout_share=holdout_share)  # fmt: skip
    except ValueError as err:
        raise _fail(str(err)) from None
    began = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("simulating", total=None)
        summary = simulate(config, out, workers=workers,
                           on_block=lambda done, total: progress.update(task, completed=done, total=total))  # fmt: skip
    console.print(
        f"simulated {summary.customers:,} customers, {summary.events:,} events, "
        f"{summary.subscriptions:,} subscription rows, {summary.churners:,} churners "
        f"in {time.perf_counter() - began:.1f}s -> {out}",
        highlight=False,
    )


@app.command("validate")
def validate_command(
    spec: SpecOpt,
    data: DataOpt = None,
    quarantine: Annotated[
        Path | None, typer.Option(help="Folder for quarantined rows (default: <data>/quarantine).")
    ] = None,
) -> None:
    """Check a dataset against the contract; exit 1 on errors, quarantine (and count) bad rows."""
    loaded = _load_spec(spec, data)
    quarantine = quarantine or _settings().data_dir / "quarantine" / loaded.name
    tables = _validate(loaded, quarantine, _settings())
    try:
        _print_event_values(tables, loaded)
    finally:
        tables.con.close()
    console.print("[green]valid[/]")


def _print_event_values(tables: ContractTables, spec: DatasetSpec) -> None:
    """What each event type's value means (it decides its features), and where that came from."""
    table = Table(title="Event values (declare them under event_values: in the spec to change them)")
    for col in ("event type", "value means", "from", "data"):
        table.add_column(col)
    for m in resolve_event_values(tables, spec):
        meaning = m.value.meaning + (f" {m.value.scale[0]:g}-{m.value.scale[1]:g}" if m.value.scale else "")
        source = {"spec": "the spec", "vocabulary": "built-in vocabulary", "data": "inferred"}[m.source]
        table.add_row(
            m.event_type, meaning, source, m.note + (f" [yellow]({m.warning})[/]" if m.warning else "")
        )
    console.print(table)


@app.command("labels")
def labels_command(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option(help="Output Parquet file.")],
    data: DataOpt = None,
) -> None:
    """Write point-in-time churn labels (customer_id, observation_date, churned) for the spec's schedule."""
    loaded = _load_spec(spec, data)
    with _validated_data(loaded, _settings()) as tables:
        _write_labels(tables, loaded, out)


def _write_labels(tables: ContractTables, loaded: DatasetSpec, out: Path) -> None:
    labels = build_labels(tables, loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels.to_parquet(out, index=False)
    summary = labels.groupby("observation_date")["churned"].agg(["size", "mean"])
    table = Table(
        title=f"Labels ({loaded.churn.definition} churn, {loaded.observation.horizon_days}-day horizon)"
    )
    for col in ("observation date", "active customers", "churn rate"):
        table.add_column(col, justify="right")
    for date, row in summary.iterrows():
        rate = "unlabelled" if pd.isna(row["mean"]) else f"{row['mean']:.2%}"  # NA: horizon past the data
        table.add_row(str(date.date()), f"{int(row['size']):,}", rate)
    console.print(table)
    console.print(f"{len(labels):,} rows -> {out}", highlight=False)


@app.command("features")
def features_command(
    spec: SpecOpt,
    out: Annotated[Path, typer.Option(help="Output Parquet file.")],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Score-time table for customers active at DATE (YYYY-MM-DD or 'latest'). "
            "Without it: the labelled training table at the spec's dates.",
        ),
    ] = None,
    data: DataOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Write point-in-time features (Parquet) and the feature catalogue (CSV beside it)."""
    date: pd.Timestamp | None = None
    if as_of not in (None, "latest"):
        try:  # bad input is refused before any work
            date = pd.Timestamp(dt.date.fromisoformat(as_of))
        except ValueError:
            raise _fail(f"--as-of: expected a date YYYY-MM-DD or 'latest', got {as_of!r}") from None
    settings = _settings()
    engine = _check_engine(engine, settings)  # bad input is refused before any work
    loaded = _load_spec(spec, data)
    with _feature_builder(engine, settings) as build, _validated_data(loaded, settings) as tables:
        _write_features(tables, loaded, out, as_of, date, build)


def _check_engine(engine: str | None, settings: Settings) -> str:
    from churnml.config import ENGINES

    engine = engine or settings.engine
    if engine not in ENGINES:
        raise _fail(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


@contextmanager
def _feature_builder(engine: str | None, settings: Settings) -> Iterator[FeatureBuilder]:
    """`build_features` here, or the same per customer partition on Spark (a session for the command)."""
    if _check_engine(engine, settings) == "duckdb":
        yield build_features
        return
    try:
        from churnml.features.spark import build_features_spark, spark_session
    except ImportError as err:
        raise _fail(f"--engine spark needs pyspark: {err}") from None
    spark = spark_session(settings.spark_master, settings.temp_dir)
    try:
        yield lambda tables, rows, fs: build_features_spark(
            spark, tables, rows, fs, settings.spark_partitions
        )
    finally:
        spark.stop()


def _write_features(
    tables: ContractTables,
    loaded: DatasetSpec,
    out: Path,
    as_of: str | None = None,
    date: pd.Timestamp | None = None,
    build: FeatureBuilder = build_features,
) -> tuple[pd.DataFrame, FeatureSet]:
    """The training table (without ``as_of``) or the scoring rows at a date, written with its catalogue."""
    began = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("building features", total=None)
        if as_of is None:
            table, fs = training_table(tables, loaded, build=build)
        else:
            fs = infer_feature_set(tables, loaded)
            table = build(tables, scoring_rows(tables, loaded, date or latest_date(tables)), fs)
        progress.update(task, total=1, completed=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    cat_path = out.with_name(out.stem + ".catalogue.csv")
    catalogue_frame(build_catalogue(fs, loaded.event_labels)).to_csv(cat_path, index=False)
    dates = table["observation_date"].nunique()
    console.print(
        f"{len(table):,} rows x {len(fs.columns)} features at {dates} date(s) in "
        f"{time.perf_counter() - began:.1f}s -> {out} (catalogue: {cat_path})",
        highlight=False,
    )
    return table, fs


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
        raise _fail("give either --spec FILE or --table FILE --target COL [--id COL]")
    if table_path is not None and not target:
        raise _fail("--table needs --target COL (the churn label column)")
    setup = _train_setup(config, trials, timeout, storage)
    engine = _check_engine(engine, setup.settings)
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
        raise _fail("--dask needs the 'distributed' extra: pip install 'churnml[distributed]'") from None
    try:
        client = Client(address, timeout=30)
    except OSError as err:
        raise _fail(f"--dask: the Dask scheduler {address} is not reachable: {err}") from None
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
            raise _fail(str(err)) from None
        with err_console.status(f"tuning with {folds}-fold cross-validation ({cfg.trials} trials)"):
            try:
                source = {"table": str(table_path.resolve()), "target": target, "id": id_column,
                          "positive": positive, "folds": folds, "keep": list(keep)}  # fmt: skip
                tuning = setup.tuning_run(study or f"{table_path.stem}-{int(time.time())}", source)
                result = train_snapshot(table, fs, cfg, folds, tuning, id_column, keep, fit)
            except (ValueError, RuntimeError, TimeoutError) as err:
                raise _fail(str(err)) from None
        logged = log_training(result, table, cfg, settings, table_path.stem, setup.client)
        _report_training(result, logged, cfg, setup.uri)
        return
    loaded = _load_spec(spec, data)  # type: ignore[arg-type]
    with (
        _feature_builder(engine, settings) as build, _validated_data(loaded, settings) as tables,
        err_console.status("building the training table"),
    ):  # fmt: skip
        table, fs = training_table(tables, loaded, build=build)
    table = _without_plays_success(table, settings, loaded.observation.horizon_days)
    source = {"spec": str(spec.resolve()), "data": str(data.resolve()) if data else None, "keep": list(keep)}  # type: ignore[union-attr]
    _train_on_spec(setup, loaded, table, fs, study, keep, source, fit)


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
        return _tuning_run(self.settings, self.storage, study, self.cfg, source, on_trial=on_trial)


def _storage_url(storage: str | None, settings: Settings) -> str:
    from churnml.modeling.studies import normalise_storage_url

    try:
        return normalise_storage_url(storage or settings.study_storage,
                                     "--storage" if storage else "CHURNML_OPTUNA_STORAGE")  # fmt: skip
    except ValueError as err:
        raise _fail(str(err)) from None


def _tuning_run(settings: Settings, url: str, study: str, cfg: TrainConfig, source: dict,
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


def _train_setup(
    config: Path | None, trials: int | None, timeout: float | None, storage: str | None = None
) -> _TrainSetup:
    from churnml.modeling import load_train_config
    from churnml.registry import check_tracking_server, close_unfinished_runs, tracking_uri

    settings = _settings()
    try:
        cfg = load_train_config(config)
    except ValueError as err:
        raise _fail(str(err)) from None
    cfg = cfg.model_copy(
        update={k: v for k, v in {"trials": trials, "timeout_seconds": timeout}.items() if v}
    )
    uri = tracking_uri(settings)
    try:  # before any expensive work
        client = check_tracking_server(uri)
    except RuntimeError as err:
        raise _fail(str(err)) from None
    for run_id in close_unfinished_runs(client, settings):
        console.print(f"marked MLflow run {run_id} FAILED (left open by an earlier failure)", highlight=False)
    return _TrainSetup(settings, cfg, client, uri, _storage_url(storage, settings))


def _train_on_spec(
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
    with _progress() as progress:
        task = progress.add_task("tuning (optuna trials)", total=cfg.trials)
        try:
            task_ = spec_task(loaded, keep)
            tuning = setup.tuning_run(study or f"{loaded.name}-{int(time.time())}", source or {},
                                      lambda done, total: progress.update(task, completed=done))  # fmt: skip
            result = train_model(table, fs, task_, cfg, tuning, fit)
        except (ValueError, RuntimeError, TimeoutError) as err:
            raise _fail(str(err)) from None
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


@app.command("tune-worker")
def tune_worker_command(
    study: Annotated[str, typer.Option("--study", help="The shared Optuna study to work on.")],
    storage: StorageOpt = None,
    seed: Annotated[
        int | None, typer.Option(help="This worker's sampler seed (default: drawn at random, recorded).")
    ] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Create the study: tune on this spec.")] = None,
    data: DataOpt = None,
    table_path: Annotated[
        Path | None, typer.Option("--table", help="Create the study: tune on a table.")
    ] = None,
    target: Annotated[str | None, typer.Option(help="With --table: the churn label column.")] = None,
    positive: Annotated[str | None, typer.Option(help="With --table: the churn value of the label.")] = None,
    id_column: Annotated[str | None, typer.Option("--id", help="With --table: the customer id.")] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="With --table: cross-validation folds.")] = 5,
    config: Annotated[Path | None, typer.Option(help="Create the study: training config YAML.")] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="Create the study: its trial budget.")] = None,
) -> None:
    """Join a shared Optuna study and run its trials until it holds its budget (heartbeats let another
    worker retry the trial of one that dies). The study's creator (`churnml train --storage URL --study
    NAME`, or a worker given --spec or --table) recorded the rows to tune on; the others need only --study."""
    from churnml.modeling import load_train_config
    from churnml.modeling.studies import worker_name

    settings = _settings()
    url = _storage_url(storage, settings)
    if url.startswith("sqlite"):
        raise _fail("tune-worker: the study must be on a database server: give --storage postgresql://... "
                    "or set CHURNML_OPTUNA_STORAGE")  # fmt: skip
    if spec is not None or table_path is not None:
        if table_path is not None and not target:
            raise _fail("--table needs --target COL (the churn label column)")
        source = {"spec": str(spec.resolve()), "data": str(data.resolve()) if data else None, "keep": []} if spec \
            else {"table": str(table_path.resolve()), "target": target, "id": id_column, "positive": positive,  # type: ignore[union-attr]
                  "folds": folds, "keep": []}  # fmt: skip
        try:
            cfg = load_train_config(config)
        except ValueError as err:
            raise _fail(str(err)) from None
        cfg = cfg.model_copy(update={"trials": trials} if trials else {})
    else:
        source, cfg = _recorded_source(url, study)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big") >> 1
    run = _tuning_run(settings, url, study, cfg, source, seed=seed)
    _run_tuning_worker(run, source, cfg, settings, data)
    console.print(f"worker {worker_name()} (seed {seed}) done: {_study_summary(url, study)}", highlight=False)


def _recorded_source(url: str, study: str) -> tuple[dict, TrainConfig]:
    """What the study's creator recorded: the rows to tune on and the training config."""
    import optuna

    from churnml.modeling import TrainConfig

    try:
        attrs = optuna.load_study(study_name=study, storage=url).user_attrs
    except KeyError:
        raise _fail(f"--study: no study {study!r} in the storage; create it with `churnml train --storage URL "
                    f"--study {study}` or give tune-worker --spec or --table") from None  # fmt: skip
    if "source" not in attrs:
        raise _fail(
            f"--study: study {study!r} records no rows to tune on (not a shared study); give --spec or --table"
        )
    source = dict(attrs["source"])
    return source, TrainConfig.model_validate(source.pop("config"))


def _run_tuning_worker(
    run: TuningRun, source: dict, cfg: TrainConfig, settings: Settings, data: Path | None
) -> None:
    """Rebuild the tuned rows as the study's creator did, and run trials on them."""
    from churnml.modeling import load_snapshot_table, spec_task
    from churnml.modeling.table import snapshot_development, tune_snapshot
    from churnml.modeling.train import development_rows, tune_development

    keep = tuple(source.get("keep") or ())
    try:
        if "table" in source:
            table, fs = load_snapshot_table(Path(source["table"]), source["target"], source.get("id"),
                                            source.get("positive"))  # fmt: skip
            tune_snapshot(snapshot_development(table, fs, cfg, int(source["folds"]), keep), cfg, run)
            return
        given = data or (Path(source["data"]) if source.get("data") else None)
        loaded = _load_spec(Path(source["spec"]), given)
        with _validated_data(loaded, settings) as tables:
            table, fs = training_table(tables, loaded)
        tune_development(development_rows(table, fs, spec_task(loaded, keep), cfg), cfg, run)
    except (ValueError, RuntimeError) as err:
        raise _fail(str(err)) from None


def _study_summary(url: str, study: str) -> str:
    import optuna

    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    states = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return f"study {study!r}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))


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

    settings = _settings()
    try:
        cfg = load_train_config(config)
        metric = metric or cfg.promotion_metric
        comparable_metric(metric)  # before any registry call
        client = check_tracking_server(tracking_uri(settings))
        close_unfinished_runs(client, settings)
        with promotion_lock(settings.home / ".churnml-promote.lock"):
            result = promote_challenger(client, metric, cfg.promotion_margin if margin is None else margin)
    except (RuntimeError, ValueError) as err:
        raise _fail(str(err)) from None
    verb = "promoted" if result.promoted else "kept"
    console.print(
        f"{verb}: champion v{result.champion_after} (was v{result.champion_before}), challenger v{result.challenger}; "
        f"{result.metric}: challenger {result.challenger_score}, champion {result.champion_score}; {result.reason}",
        highlight=False,
    )


def _champion(settings: Settings, model_uri: str | None):  # noqa: ANN202
    """The model to score with (native), and what it is, from the registry."""
    from mlflow.exceptions import MlflowException

    from churnml.registry import MODEL_NAME, check_tracking_server, load_model, tracking_uri

    uri = tracking_uri(settings)
    try:
        client = check_tracking_server(uri)
        info = {"tracking_uri": uri}
        if model_uri is None:  # resolve the alias once: a promotion meanwhile must not mislabel the scores
            version = str(client.get_model_version_by_alias(MODEL_NAME, settings.model_alias).version)
            model_uri = f"models:/{MODEL_NAME}/{version}"
            info |= {"model_version": version, "model_alias": settings.model_alias}
        info["model_uri"] = model_uri
        return load_model(model_uri, client), info
    except MlflowException as err:
        raise _fail(
            f"no model {model_uri or settings.model_alias} in the registry at {uri}: {err.message}"
        ) from None
    except (RuntimeError, LookupError, ValueError) as err:
        raise _fail(str(err)) from None


@app.command("score")
def score_command(
    spec: SpecOpt,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: reports/ under CHURNML_HOME).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model URI (default: models:/churn@champion).")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Date YYYY-MM-DD (default: the latest).")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, max=20, help="Reasons per customer.")] = 5,
    history: Annotated[int, typer.Option(min=0, max=36, help="Past observation dates to score.")] = 6,
    data: DataOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Score every active customer at the latest date with reasons and plays (Parquet + DuckDB workspace)."""
    date: pd.Timestamp | None = None
    if as_of is not None:
        try:
            date = pd.Timestamp(dt.date.fromisoformat(as_of))
        except ValueError:
            raise _fail(f"--as-of: expected a date YYYY-MM-DD, got {as_of!r}") from None
    settings = _settings()
    engine = _check_engine(engine, settings)
    loaded = _load_spec(spec, data)
    with _feature_builder(engine, settings) as build, _validated_data(loaded, settings) as tables:
        _score(tables, loaded, settings, out, model, date, top_k, history, build)


def _score(
    tables: ContractTables, loaded: DatasetSpec, settings: Settings, out: Path | None, model: str | None,
    date: pd.Timestamp | None, top_k: int = 5, history: int = 6, build: FeatureBuilder = build_features,
) -> None:  # fmt: skip
    """Score the active customers with the champion (or ``model``) and write the reports and workspace;
    ``build`` computes the features (here, or on Spark with ``--engine spark``)."""
    from churnml.explain.playbook import load_playbook
    from churnml.retention import retention_tables
    from churnml.score import RiskPolicy, score_customers, write_workspace

    try:
        playbook = load_playbook(settings.playbook)
    except ValueError as err:
        raise _fail(str(err)) from None
    churn_model, info = _champion(settings, model)
    uplift = _uplift_model(settings, churn_model)
    info = info if uplift is None else {**info, "uplift_model": uplift.kind}
    out = out or settings.reports_dir
    began = time.perf_counter()
    with err_console.status("scoring active customers"):
        result = score_customers(tables, loaded, churn_model, date or latest_date(tables), info, top_k, history,
                                 policy=RiskPolicy(settings.risk_high, settings.risk_medium), playbook=playbook,
                                 build=build, uplift=uplift)  # fmt: skip
        extra = retention_tables(tables, loaded, result)
    held = _hold_out(result, settings, churn_model.horizon_days)
    out.mkdir(parents=True, exist_ok=True)
    result.scores.to_parquet(out / "scores.parquet", index=False)
    result.reasons.to_parquet(out / "reasons.parquet", index=False)
    result.history.to_parquet(out / "score_history.parquet", index=False)
    workspace = write_workspace(result, out / "workspace.duckdb", extra)
    s = result.scores
    console.print(
        f"scored {len(s):,} customers at {result.as_of.date()} in {time.perf_counter() - began:.1f}s: "
        f"{(s['risk_tier'] == 'high').sum():,} high risk, revenue at risk {s['revenue_at_risk'].sum():,.0f} "
        f"over {churn_model.horizon_days} days -> {out / 'scores.parquet'}, workspace {workspace}",
        highlight=False,
    )
    console.print(held, highlight=False)


def _uplift_model(settings: Settings, churn_model):  # noqa: ANN001, ANN202
    """The uplift model `churnml impact --fit-uplift` saved, if it was learnt on this model's features."""
    from churnml.impact.uplift import UpliftModel

    if not (settings.uplift_path / "uplift.json").is_file():
        return None
    uplift = UpliftModel.load(settings.uplift_path)
    if uplift.columns != churn_model.feature_names:
        err_console.print(f"[yellow]uplift at {settings.uplift_path} was learnt on another model's features: "
                          "run `churnml impact --spec FILE --fit-uplift` again[/]", highlight=False)  # fmt: skip
        return None
    return uplift


def _hold_out(result, settings: Settings, horizon_days: int) -> str:  # noqa: ANN001
    """Hold out a share of the eligible accounts (marked in the scores, recorded in the CSM store)."""
    from churnml.impact.holdout import CONTROL, HoldoutPolicy, campaign_period, mark_holdouts
    from churnml.workspace.holdouts import record_holdouts
    from churnml.workspace.store import open_store

    policy = HoldoutPolicy(settings.holdout_share)
    period = campaign_period(result.as_of)
    result.scores = mark_holdouts(result.scores, period, policy)
    result.model_info |= {"holdout_share": str(policy.share), "campaign_period": period}
    if not policy.enabled:
        return "holdouts are off (CHURNML_HOLDOUT_SHARE=0): the impact of calls cannot be measured"
    store = open_store(settings.store_url)
    try:
        new = record_holdouts(store, result.scores, horizon_days)
    finally:
        store.close()
    control = int((result.scores["holdout_arm"] == CONTROL).sum())
    return (f"campaign {period}: {control:,} eligible account(s) held out as a control group "
            f"(share {policy.share:g}), {new:,} new assignment(s) recorded in the CSM store")  # fmt: skip


@app.command("monitor")
def monitor_command(
    spec: SpecOpt,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Date YYYY-MM-DD (default: the latest).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Config YAML with a monitor: section.")] = None,
    retrain: Annotated[
        bool, typer.Option(help="When retraining is recommended, train and run the promotion gate.")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Model URI (default: models:/churn@champion).")] = None,
    data: DataOpt = None,
) -> None:
    """Compare the population at a date with the champion's training population: drift, performance
    estimated from its probabilities, realised performance of matured dates. Exit 3 when retraining is
    recommended (or, with --retrain, retrain and run the promotion gate)."""
    from churnml.modeling import load_train_config
    from churnml.monitor.run import load_monitor_config, monitor_at
    from churnml.monitor.store import save_report
    from churnml.monitor.tracking import log_monitoring
    from churnml.registry import check_tracking_server, tracking_uri

    date = _date_option("--as-of", as_of)
    settings = _settings()
    path = config or repo_config()
    try:
        monitor_config, train_config = load_monitor_config(path), load_train_config(path)
    except ValueError as err:
        raise _fail(str(err)) from None
    loaded = _load_spec(spec, data)
    churn_model, info = _champion(settings, model)
    tiers = {"high": settings.risk_high, "medium": settings.risk_medium}
    with _validated_data(loaded, settings) as tables:
        with err_console.status("monitoring the scored population"):
            report = monitor_at(tables, loaded, churn_model, date or latest_date(tables), monitor_config,
                                train_config.capacity, tiers)  # fmt: skip
    version = info.get("model_version", "")
    run_id = log_monitoring(check_tracking_server(tracking_uri(settings)), settings, report, version)
    saved = save_report(settings.monitoring_path, report, version, run_id)
    _print_monitor(report)
    console.print(f"MLflow run {run_id}; history {saved}", highlight=False)
    if not report.retrain:
        console.print("[green]healthy[/]: no retraining needed")
        return
    console.print("[yellow]retraining recommended[/]:\n  - " + "\n  - ".join(report.reasons), highlight=False)
    if not retrain:
        raise typer.Exit(MONITOR_RETRAIN_EXIT)
    train_command(spec=spec, config=path, trials=None, timeout=None, data=data, table_path=None, target=None,
                  positive=None, id_column=None, folds=5, keep_column=None, study=None)  # fmt: skip
    promote_command(metric=None, margin=None, config=path)


MONITOR_RETRAIN_EXIT = 3  # `churnml monitor`: retraining recommended (1 and 2 are errors)


@app.command("alerts")
def alerts_command(
    min_rise: Annotated[
        float | None, typer.Option(min=0, help="Probability points (default: CHURNML_ALERT_MIN_RISE, 10).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="CSV file (default: reports/alerts-<date>.csv).")] = None,
    webhook: Annotated[
        str | None,
        typer.Option(help="POST the new alerts as JSON here (default: CHURNML_ALERT_WEBHOOK_URL)."),
    ] = None,
) -> None:
    """Accounts that moved into a higher risk tier or rose by --min-rise points since their previous score,
    per owner: new ones to a CSV and, optionally, a webhook. A crossing is sent once."""
    from churnml.workspace.alerts import AlertDeliveryError, alerts_csv, find_crossings, send_alerts
    from churnml.workspace.pages.queries import WorkspaceMissing, open_workspace
    from churnml.workspace.store import open_store

    settings = _settings()
    rise = settings.alert_min_rise if min_rise is None else min_rise
    store = open_store(settings.store_url)
    try:
        with open_workspace(settings.workspace_path, settings) as con:
            as_of = con.execute("SELECT max(as_of) FROM scores").fetchone()[0]
            crossings = find_crossings(con, rise, store.states())
        new = send_alerts(
            store, crossings, webhook or settings.alert_webhook_url, settings.alert_webhook_retries
        )
    except WorkspaceMissing:
        raise _fail(
            f"no scores at {settings.workspace_path}: run `churnml score --spec FILE` first"
        ) from None
    except AlertDeliveryError as err:
        raise _fail(f"{err}; nothing was marked as sent, run again to retry", code=1) from None
    finally:
        store.close()
    path = out or settings.reports_dir / f"alerts-{pd.Timestamp(as_of).date()}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(alerts_csv(new), encoding="utf-8")
    owners: dict[str, int] = {}
    for c in new:
        owners[c.owner or "(no owner)"] = owners.get(c.owner or "(no owner)", 0) + 1
    console.print(f"{len(new)} new alert(s) of {len(crossings)} crossing(s) (rise >= {rise:g} points or a higher "
                  f"tier) -> {path}" + "".join(f"\n  {o}: {n}" for o, n in sorted(owners.items())),
                  highlight=False)  # fmt: skip


@app.command("impact")
def impact_command(
    spec: Annotated[
        Path | None, typer.Option("--spec", help="Dataset spec: first record the outcomes that have matured.")
    ] = None,
    data: DataOpt = None,
    fit_uplift: Annotated[
        bool, typer.Option(help="With --spec: learn how much a play lowers each account's churn (X-learner).")
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="Model URI whose features uplift uses (default: champion).")
    ] = None,
) -> None:
    """Did the calls help? Save rate of treated against held-out accounts with a 95% interval, the minimum
    detectable effect, revenue kept overall and per play, and ROI (CHURNML_PLAY_COST)."""
    from churnml.impact.report import impact_report
    from churnml.workspace.holdouts import impact_outcomes
    from churnml.workspace.store import open_store

    settings = _settings()
    store = open_store(settings.store_url)
    try:
        if spec is not None:
            _record_outcomes(store, _load_spec(spec, data), settings)
        if fit_uplift:
            if spec is None:
                raise _fail("--fit-uplift: needs --spec (features are built from the data)")
            _fit_uplift(store, _load_spec(spec, data), settings, model)
        outcomes, pending = impact_outcomes(store)
    finally:
        store.close()
    report = impact_report(
        outcomes, pending, settings.holdout_share, settings.play_cost, settings.impact_min_effect
    )
    _print_impact(report)


def _record_outcomes(store, loaded: DatasetSpec, settings: Settings) -> None:  # noqa: ANN001
    """Give every assignment whose horizon has passed its outcome (churned, revenue kept)."""
    from churnml.impact.outcomes import matured_outcomes
    from churnml.labels import label_margin
    from churnml.workspace.holdouts import read_holdouts, record_outcomes

    waiting = read_holdouts(store, without_outcome=True)
    if waiting.empty:
        return
    with _validated_data(loaded, settings) as tables:
        until = tables.window.observed_until - label_margin(loaded)
        dates = sorted({pd.Timestamp(d) for d in waiting["scored_on"] if pd.Timestamp(d) <= until})
        labels = build_labels(tables, loaded, dates=dates) if dates else None
    if labels is None:
        console.print(
            f"no outcomes yet: the data covers horizons of scores up to {until.date()}", highlight=False
        )
        return
    new = record_outcomes(store, matured_outcomes(waiting, labels, until), dt.date.today())
    console.print(f"{new:,} outcome(s) recorded (scores up to {until.date()})", highlight=False)


MIN_UPLIFT_ROWS = 30  # outcomes per arm before an uplift model is worth fitting


def _fit_uplift(store, loaded: DatasetSpec, settings: Settings, model_uri: str | None) -> None:  # noqa: ANN001
    """Learn uplift from every assignment with an outcome, on the champion's features at the score dates."""
    from churnml.impact.uplift import fit_uplift
    from churnml.workspace.holdouts import learning_rows

    rows = learning_rows(store)
    arms = {"treated": int(rows["treated"].sum()), "held out": int((~rows["treated"]).sum())}
    if min(arms.values()) < MIN_UPLIFT_ROWS:
        raise _fail(f"--fit-uplift: too few outcomes to learn from ({arms['treated']} treated, {arms['held out']} held "
                    f"out; at least {MIN_UPLIFT_ROWS} each)", code=1)  # fmt: skip
    churn_model, _ = _champion(settings, model_uri)
    with _validated_data(loaded, settings) as tables:
        features = build_features(tables, rows[["customer_id", "observation_date"]], churn_model.feature_set)
    fitted = fit_uplift(churn_model.encode(features), rows["treated"].to_numpy(), rows["churned"].to_numpy())
    path = fitted.save(settings.uplift_path)
    console.print(f"uplift (X-learner) fitted on {arms['treated']:,} treated and {arms['held out']:,} held-out "
                  f"outcomes -> {path}; `churnml score` now adds the expected revenue saved", highlight=False)  # fmt: skip


def _print_impact(report) -> None:  # noqa: ANN001
    from churnml.impact.report import report_rows

    if not report.holdouts_enabled:
        console.print("[yellow]holdouts are off[/] (CHURNML_HOLDOUT_SHARE=0): new calls cannot be measured")
    table = Table(title="Impact of the plays: save rate treated against held out (95% interval)")
    columns = {"play": "play", "treated": "treated", "control": "held out", "treated_rate": "saved (treated)",
               "control_rate": "saved (held out)", "effect": "difference", "interval": "95% interval",
               "mde": "detectable", "revenue_kept": "revenue kept", "roi": "ROI", "verdict": "verdict"}  # fmt: skip
    for label in columns.values():
        table.add_column(label, justify="left" if label in ("play", "verdict", "95% interval") else "right")
    for row in report_rows(report):
        table.add_row(*(row[k] for k in columns))
    console.print(table)
    console.print(f"{report.pending:,} assignment(s) wait for their horizon to pass" +
                  ("" if report.overall.cost is not None else "; set CHURNML_PLAY_COST for ROI"), highlight=False)  # fmt: skip


def _date_option(name: str, value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(dt.date.fromisoformat(value))
    except ValueError:
        raise _fail(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from None


def _print_monitor(report) -> None:  # noqa: ANN001
    estimates = Table(
        title=f"Estimated performance at {report.as_of.date()} ({report.rows:,} accounts, labels not in yet)"
    )
    for col in ("metric", "estimate", "95% band"):
        estimates.add_column(col, justify="right")
    for e in report.estimates.values():
        estimates.add_row(e.metric, f"{e.value:.3f}", f"{e.low:.3f}-{e.high:.3f}")
    console.print(estimates)
    if len(report.history):
        realised = Table(title="Matured dates: realised against what the probabilities estimated")
        for col in ("date", "metric", "estimated (band)", "realised"):
            realised.add_column(col, justify="right")
        for r in report.history[report.history["metric"].isin(["roc_auc", "pr_auc"])].itertuples():
            realised.add_row(
                str(r.as_of.date()),
                r.metric,
                f"{r.estimated:.3f} ({r.low:.3f}-{r.high:.3f})",
                f"{r.realised:.3f}",
            )
        console.print(realised)
    drifted = report.drift[report.drift["drifted"] | report.drift["missing_drifted"]]
    table = Table(title=f"Drift: {int(report.drift['alarm'].sum())} alarm(s) in {len(report.drift)} columns")
    for col in ("column", "statistic", "value", "threshold", "missing before → now", "note"):
        table.add_column(col)
    for r in drifted.head(20).itertuples():
        table.add_row(r.column, r.statistic, f"{r.value:.3f}", f"{r.threshold:.3f}",
                      f"{r.missing_before:.1%} → {r.missing_now:.1%}", r.note)  # fmt: skip
    console.print(table)


@app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1 keeps it local).")] = "127.0.0.1",
    model_tag: Annotated[
        str | None,
        typer.Option("--model-tag", help="Serve this BentoML model tag instead of the registry alias."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64)] = 1,
) -> None:
    """Import models:/churn@champion into the BentoML store and start the prediction service."""
    settings = _settings()
    env = _serving_env(settings)
    os.environ.update(env)
    from churnml.service import import_registered_model

    try:
        tag = model_tag or import_registered_model(settings)
    except (RuntimeError, LookupError, ValueError) as err:
        raise _fail(str(err)) from None
    if settings.api_token is not None and len(settings.api_token) < 24:
        log.warning("CHURNML_API_TOKEN has %d characters: use a long random one (`churnml users add` "
                    "makes 43-character tokens)", len(settings.api_token))  # fmt: skip
    env |= {"CHURNML_BENTO_MODEL": tag, "CHURNML_SERVE_WORKERS": str(workers)}
    console.print(f"serving {tag} on http://{host}:{port} (pages: http://{host}:{port}/ui/)", highlight=False)
    sys.stdout.flush()
    # the service module is in the installed package: no checkout needed, CHURNML_HOME as working dir
    argv = [sys.executable, "-m", "bentoml", "serve", "churnml.service.bento:ChurnService", "--host", host,
            "--port", str(port), "--working-dir", str(settings.home)]  # fmt: skip
    os.execve(sys.executable, argv, {**os.environ, **env})


def _serving_env(settings: Settings) -> dict[str, str]:
    """Environment of the service process: the BentoML store and the workspace under CHURNML_HOME."""
    return {
        "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(settings.bentoml_home)),
        "CHURNML_HOME": str(settings.home),
        "BENTOML_DO_NOT_TRACK": "True",
    }


users_app = typer.Typer(help="Named users of the service and its pages, each with their own token.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(users_app, name="users")


def _user_store():  # noqa: ANN202
    from churnml.service.users import UserStore

    return UserStore(_settings().users_path)


@users_app.command("add")
def users_add_command(
    name: Annotated[str, typer.Argument(help="Who the token is for (letters, digits, . _ @ -).")],
    replace: Annotated[bool, typer.Option(help="Issue a new token to an existing user.")] = False,
) -> None:
    """Create a user and print their token (shown once; only its SHA-256 is stored)."""
    store = _user_store()
    try:
        token = store.add(name, replace=replace)
    except ValueError as err:
        raise _fail(str(err)) from None
    err_console.print(f"user {name} added to {store.path}; give them this token (it is not shown again):",
                      highlight=False)  # fmt: skip
    console.print(token, highlight=False, soft_wrap=True)


@users_app.command("list")
def users_list_command() -> None:
    """The users and when their tokens were issued."""
    for user in _user_store().users():
        console.print(f"{user.name}  {user.created}", highlight=False)


@users_app.command("remove")
def users_remove_command(name: Annotated[str, typer.Argument()]) -> None:
    """Remove a user: their token and page sessions stop working at once."""
    if not _user_store().remove(name):
        raise _fail(f"no user {name!r}")
    console.print(f"removed user {name}", highlight=False)


@app.command("run")
def run_command(
    customers: Annotated[int, typer.Option(min=1)] = 2_000,
    months: Annotated[int, typer.Option(min=3, max=120)] = 18,
    seed: Annotated[int, typer.Option()] = 0,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Optuna trials (default: training/config.yaml).")
    ] = None,
    serve: Annotated[bool, typer.Option(help="Start the prediction service and pages at the end.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
) -> None:
    """The main job on embedded defaults: simulate -> validate -> labels -> features -> train -> promote ->
    batch score -> serve (BentoML, with the CSM pages) until Ctrl-C."""
    settings = _settings()
    data_dir = settings.data_dir / "simulated"
    spec = data_dir / "spec.yaml"
    simulate_command(out=data_dir, customers=customers, months=months, seed=seed)
    setup = _train_setup(repo_config(), trials, None)
    loaded = _load_spec(spec, None)
    with _validated_data(loaded, settings) as tables:  # validated once, for every stage below
        _write_labels(tables, loaded, settings.data_dir / "labels" / "simulated.parquet")
        table, fs = _write_features(tables, loaded, settings.data_dir / "features" / "simulated.parquet")
        _train_on_spec(setup, loaded, table, fs, None)
        promote_command(metric=None, margin=None, config=repo_config())
        _score(tables, loaded, settings, None, None, None)
    if serve:
        console.print(
            f"try: curl -s -X POST http://127.0.0.1:{port}/explain -H 'Content-Type: application/json' "
            """-d '{"customers": [{"customer_id": "demo", "events": [{"timestamp": "2025-06-01T10:00:00", """
            """"event_type": "login"}], "profile": {"plan": "starter", "segment": "SMB", "mrr": 99}}]}'""",
            highlight=False,
        )
        serve_command(port=port, host="127.0.0.1", model_tag=None, workers=1)


def repo_config() -> Path | None:
    """training/config.yaml of the checkout, when running from one."""
    path = Path(__file__).resolve().parents[2] / "training" / "config.yaml"
    return path if path.is_file() else None


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
