"""`churnml tune-worker`: join a shared Optuna study (on PostgreSQL) from any machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from churnml.cli.common import (
    DataOpt,
    StorageOpt,
    app,
    console,
    fail,
    load_settings,
    read_spec,
    validated_data,
)
from churnml.config import Settings
from churnml.features.batch import training_table

if TYPE_CHECKING:  # imported when training runs: the CLI starts without MLflow
    from churnml.modeling import TrainConfig, TuningRun
from churnml.cli.training import storage_url, tuning_run


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

    settings = load_settings()
    url = storage_url(storage, settings)
    if url.startswith("sqlite"):
        raise fail("tune-worker: the study must be on a database server: give --storage postgresql://... "
                    "or set CHURNML_OPTUNA_STORAGE")  # fmt: skip
    if spec is not None or table_path is not None:
        if table_path is not None and not target:
            raise fail("--table needs --target COL (the churn label column)")
        source = {"spec": str(spec.resolve()), "data": str(data.resolve()) if data else None, "keep": []} if spec \
            else {"table": str(table_path.resolve()), "target": target, "id": id_column, "positive": positive,  # type: ignore[union-attr]
                  "folds": folds, "keep": []}  # fmt: skip
        try:
            cfg = load_train_config(config)
        except ValueError as err:
            raise fail(str(err)) from None
        cfg = cfg.model_copy(update={"trials": trials} if trials else {})
    else:
        source, cfg = _recorded_source(url, study)
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big") >> 1
    run = tuning_run(settings, url, study, cfg, source, seed=seed)
    _run_tuning_worker(run, source, cfg, settings, data)
    console.print(f"worker {worker_name()} (seed {seed}) done: {_study_summary(url, study)}", highlight=False)


def _recorded_source(url: str, study: str) -> tuple[dict, TrainConfig]:
    """What the study's creator recorded: the rows to tune on and the training config."""
    import optuna

    from churnml.modeling import TrainConfig

    try:
        attrs = optuna.load_study(study_name=study, storage=url).user_attrs
    except KeyError:
        raise fail(f"--study: no study {study!r} in the storage; create it with `churnml train --storage URL "
                    f"--study {study}` or give tune-worker --spec or --table") from None  # fmt: skip
    if "source" not in attrs:
        raise fail(
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
        loaded = read_spec(Path(source["spec"]), given)
        with validated_data(loaded, settings) as tables:
            table, fs = training_table(tables, loaded)
        tune_development(development_rows(table, fs, spec_task(loaded, keep), cfg), cfg, run)
    except (ValueError, RuntimeError) as err:
        raise fail(str(err)) from None


def _study_summary(url: str, study: str) -> str:
    import optuna

    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    states = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return f"study {study!r}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
