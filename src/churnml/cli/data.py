"""Data commands: simulate, validate, labels and features."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from churnml.cli.common import (
    DataOpt,
    EngineOpt,
    SpecOpt,
    app,
    console,
    err_console,
    fail,
    load_settings,
    progress_bar,
    read_spec,
    validate_data,
    validated_data,
)
from churnml.config import Settings
from churnml.data import ContractTables
from churnml.features.batch import FeatureBuilder, latest_date, scoring_rows, training_table
from churnml.features.catalogue import build_catalogue, catalogue_frame
from churnml.features.engine import build_features
from churnml.features.inference import infer_feature_set, resolve_event_values
from churnml.features.sets import FeatureSet
from churnml.labels import build_labels
from churnml.simulate import SimulationConfig, simulate
from churnml.spec import DatasetSpec


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
        raise fail(f"--start: expected a date YYYY-MM-DD, got {start!r}") from None
    try:
        config = SimulationConfig(customers=customers, months=months, seed=seed, start=start_date, drift=drift,
                                  drift_month=drift_month, plays=plays, holdout_share=holdout_share)  # fmt: skip
    except ValueError as err:
        raise fail(str(err)) from None
    began = time.perf_counter()
    with progress_bar() as progress:
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
    loaded = read_spec(spec, data)
    quarantine = quarantine or load_settings().data_dir / "quarantine" / loaded.name
    tables = validate_data(loaded, quarantine, load_settings())
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
    loaded = read_spec(spec, data)
    with validated_data(loaded, load_settings()) as tables:
        write_labels(tables, loaded, out)


def write_labels(tables: ContractTables, loaded: DatasetSpec, out: Path) -> None:
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
            raise fail(f"--as-of: expected a date YYYY-MM-DD or 'latest', got {as_of!r}") from None
    settings = load_settings()
    engine = check_engine(engine, settings)  # bad input is refused before any work
    loaded = read_spec(spec, data)
    with feature_builder(engine, settings) as build, validated_data(loaded, settings) as tables:
        write_features(tables, loaded, out, as_of, date, build)


def check_engine(engine: str | None, settings: Settings) -> str:
    from churnml.config import ENGINES

    engine = engine or settings.engine
    if engine not in ENGINES:
        raise fail(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


@contextmanager
def feature_builder(engine: str | None, settings: Settings) -> Iterator[FeatureBuilder]:
    """`build_features` here, or the Ibis definitions on Spark and the same NumPy step per customer
    partition (a session for the command)."""
    if check_engine(engine, settings) == "duckdb":
        yield build_features
        return
    from churnml.features.spark import SparkFeatures, spark_session

    try:
        spark = spark_session(settings.spark_master, settings.temp_dir)
    except ImportError as err:
        raise fail(f"--engine spark needs pyspark: {err}") from None
    if settings.spark_staging is None and not settings.spark_master.startswith("local"):
        err_console.print(f"[yellow]CHURNML_SPARK_MASTER is {settings.spark_master}: executors on other machines "
                          "cannot read the contract tables from this machine's temporary folder; set "
                          "CHURNML_SPARK_STAGING to a folder every machine mounts[/]", highlight=False)  # fmt: skip
    try:  # scoring with it runs the model and its reasons in the partitions too (churnml.score)
        yield SparkFeatures(spark, settings.spark_partitions, settings.spark_staging)
    finally:
        spark.stop()


def write_features(
    tables: ContractTables,
    loaded: DatasetSpec,
    out: Path,
    as_of: str | None = None,
    date: pd.Timestamp | None = None,
    build: FeatureBuilder = build_features,
) -> tuple[pd.DataFrame, FeatureSet]:
    """The training table (without ``as_of``) or the scoring rows at a date, written with its catalogue."""
    began = time.perf_counter()
    with progress_bar() as progress:
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
