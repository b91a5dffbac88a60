"""`churnml monitor`: drift, estimated and realised performance, the retrain trigger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from churnml.cli.common import (
    DataOpt,
    SpecOpt,
    app,
    champion_model,
    console,
    date_option,
    err_console,
    fail,
    load_settings,
    read_spec,
    repo_config,
    validated_data,
)
from churnml.cli.training import promote_command, train_command
from churnml.features.batch import latest_date


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

    date = date_option("--as-of", as_of)
    settings = load_settings()
    path = config or repo_config()
    try:
        monitor_config, train_config = load_monitor_config(path), load_train_config(path)
    except ValueError as err:
        raise fail(str(err)) from None
    loaded = read_spec(spec, data)
    churn_model, info = champion_model(settings, model)
    tiers = {"high": settings.risk_high, "medium": settings.risk_medium}
    with validated_data(loaded, settings) as tables:
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
