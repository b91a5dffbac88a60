"""What every command shares: the app and its consoles, settings, specs, validated data, options."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churnml.config import Settings, repo_root
from churnml.data import ContractTables, DataError, DataValidationError, ValidationReport, load_dataset
from churnml.engine import connect
from churnml.spec import DatasetSpec, SpecError, load_spec

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


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def load_settings() -> Settings:
    """Settings from the environment; a malformed CHURNML_* variable is a usage error, not a traceback."""
    try:
        return Settings.from_env()
    except ValueError as err:
        raise fail(str(err)) from None


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )


def read_spec(spec: Path, data: Path | None) -> DatasetSpec:
    try:
        loaded = load_spec(spec)
    except SpecError as err:
        raise fail(str(err)) from None
    return loaded.with_source_path(data) if data else loaded


def print_report(report: ValidationReport) -> None:
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


def validate_data(spec: DatasetSpec, quarantine: Path | None, settings: Settings) -> ContractTables:
    """The validated contract tables (the report printed), or a clean exit naming what is wrong."""
    con = connect(settings)
    try:
        with err_console.status(f"validating {spec.name} against the data contract"):
            tables = load_dataset(con, spec, quarantine_dir=quarantine)
    except DataError as err:
        con.close()
        raise fail(str(err)) from None
    except DataValidationError as err:
        con.close()
        print_report(err.report)
        raise fail(f"{len(err.report.errors)} error(s) in the data; nothing was run", code=1) from None
    assert tables.report is not None
    print_report(tables.report)
    return tables


@contextmanager
def validated_data(spec: DatasetSpec, settings: Settings) -> Iterator[ContractTables]:
    """Validated contract tables (validated once for every stage that reads them); library ValueErrors
    become clean CLI errors."""
    tables = validate_data(spec, settings.data_dir / "quarantine" / spec.name, settings)
    try:
        yield tables
    except ValueError as err:
        raise fail(str(err)) from None
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


def champion_model(settings: Settings, model_uri: str | None):  # noqa: ANN202
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
        raise fail(
            f"no model {model_uri or settings.model_alias} in the registry at {uri}: {err.message}"
        ) from None
    except (RuntimeError, LookupError, ValueError) as err:
        raise fail(str(err)) from None


def date_option(name: str, value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(dt.date.fromisoformat(value))
    except ValueError:
        raise fail(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from None


def repo_config() -> Path | None:
    """training/config.yaml of the checkout, when running from one."""
    path = repo_root() / "training" / "config.yaml"
    return path if path.is_file() else None
