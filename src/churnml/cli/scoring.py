"""Scoring and the CSM's loop: score (with holdouts and uplift), alerts, impact."""

from __future__ import annotations

import datetime as dt
import time
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
    champion_model,
    console,
    err_console,
    fail,
    load_settings,
    read_spec,
    validated_data,
)
from churnml.cli.data import check_engine, feature_builder
from churnml.config import Settings
from churnml.data import ContractTables
from churnml.explain import REASONS_SHOWN
from churnml.features.batch import FeatureBuilder, latest_date
from churnml.features.engine import build_features
from churnml.labels import build_labels
from churnml.spec import DatasetSpec


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
    top_k: Annotated[int, typer.Option(min=1, max=20, help="Reasons per customer.")] = REASONS_SHOWN,
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
            raise fail(f"--as-of: expected a date YYYY-MM-DD, got {as_of!r}") from None
    settings = load_settings()
    engine = check_engine(engine, settings)
    loaded = read_spec(spec, data)
    with feature_builder(engine, settings) as build, validated_data(loaded, settings) as tables:
        score_and_write(tables, loaded, settings, out, model, date, top_k, history, build)


def score_and_write(
    tables: ContractTables, loaded: DatasetSpec, settings: Settings, out: Path | None, model: str | None,
    date: pd.Timestamp | None, top_k: int = REASONS_SHOWN, history: int = 6, build: FeatureBuilder = build_features,
) -> None:  # fmt: skip
    """Score the active customers with the champion (or ``model``) and write the reports and workspace;
    ``build`` computes the features (here, or on Spark with ``--engine spark``)."""
    from churnml.explain import Explainer, load_playbook
    from churnml.retention import retention_tables
    from churnml.score import RiskPolicy, score_customers, write_workspace

    try:
        playbook = load_playbook(settings.playbook)
    except ValueError as err:
        raise fail(str(err)) from None
    churn_model, info = champion_model(settings, model)
    if settings.playbook is not None:  # the default one names columns only some data sets have
        for unread in Explainer(churn_model.catalogue, playbook=playbook).unread_conditions():
            err_console.print(f"[yellow]{settings.playbook}: {unread}[/]", highlight=False)
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
    from churnml.impact.uplift import StaleUpliftModel, UpliftModel

    if not (settings.uplift_path / "uplift.json").is_file():
        return None
    try:
        uplift = UpliftModel.load(settings.uplift_path)
    except StaleUpliftModel as err:
        err_console.print(f"[yellow]{err}: ranked by revenue at risk; run `churnml impact --spec FILE "
                          "--fit-uplift` again[/]", highlight=False)  # fmt: skip
        return None
    except ValueError as err:
        raise fail(f"{err}: run `churnml impact --spec FILE --fit-uplift` again") from None
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

    settings = load_settings()
    rise = settings.alert_min_rise if min_rise is None else min_rise
    store = open_store(settings.store_url)
    link = f"{settings.pages_url or '/ui'}/accounts/"  # a path on the service without CHURNML_PAGES_URL
    path = out
    try:
        with open_workspace(settings.workspace_path, settings) as con:
            as_of = con.execute("SELECT max(as_of) FROM scores").fetchone()[0]
            crossings = find_crossings(con, rise, store.states())
        path = out or settings.reports_dir / f"alerts-{pd.Timestamp(as_of).date()}.csv"

        def write(new: list) -> None:  # the CSV first: a crossing is recorded as sent only once written
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(alerts_csv(new, link), encoding="utf-8")

        new = send_alerts(store, crossings, webhook or settings.alert_webhook_url, settings.alert_webhook_retries,
                          write=write)  # fmt: skip
    except OSError as err:
        raise fail(f"alerts: cannot write {path} ({err.strerror}); nothing was marked as sent") from None
    except WorkspaceMissing:
        raise fail(f"no scores at {settings.workspace_path}: run `churnml score --spec FILE` first") from None
    except AlertDeliveryError as err:
        raise fail(f"{err}; nothing was marked as sent, run again to retry", code=1) from None
    finally:
        store.close()
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
        bool,
        typer.Option(
            help="With --spec: learn how much each play lowers an account's churn (per-play learner)."
        ),
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

    settings = load_settings()
    store = open_store(settings.store_url)
    try:
        if spec is not None:
            _record_outcomes(store, read_spec(spec, data), settings)
        if fit_uplift:
            if spec is None:
                raise fail("--fit-uplift: needs --spec (features are built from the data)")
            _fit_uplift(store, read_spec(spec, data), settings, model)
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
    with validated_data(loaded, settings) as tables:
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
    """Learn uplift from every assignment with an outcome, and the accounts of the same score dates that
    were not on a call list, on the champion's features at those dates."""
    from churnml.impact.training import not_listed_rows
    from churnml.impact.uplift import fit_uplift
    from churnml.workspace.holdouts import learning_rows, read_holdouts

    rows = learning_rows(store)
    arms = {"treated": int(rows["treated"].sum()), "held out": int((~rows["treated"]).sum())}
    if min(arms.values()) < MIN_UPLIFT_ROWS:
        raise fail(f"--fit-uplift: too few outcomes to learn from ({arms['treated']} treated, {arms['held out']} held "
                    f"out; at least {MIN_UPLIFT_ROWS} each)", code=1)  # fmt: skip
    churn_model, _ = champion_model(settings, model_uri)
    with validated_data(loaded, settings) as tables:
        dates = sorted(pd.Timestamp(d) for d in rows["observation_date"].unique())
        labels = build_labels(tables, loaded, dates=dates)[["customer_id", "observation_date", "churned"]]
        others = not_listed_rows(labels, read_holdouts(store), churn_model.horizon_days)
        others = others.assign(customer_id=others["customer_id"].astype(str),
                               observation_date=others["observation_date"].astype("datetime64[us]"))  # fmt: skip
        rows = pd.concat([rows.assign(listed=True), others.assign(treated=False, play=None, listed=False)],
                         ignore_index=True)  # fmt: skip
        features = build_features(tables, rows[["customer_id", "observation_date"]], churn_model.feature_set)
    fitted = fit_uplift(churn_model.encode(features), rows["treated"].to_numpy(bool), rows["churned"].to_numpy(bool),
                        kind="play", play=rows["play"].to_numpy(object), listed=rows["listed"].to_numpy(bool),
                        dates=rows["observation_date"].to_numpy())  # fmt: skip
    path = fitted.save(settings.uplift_path)
    console.print(f"uplift (per-play learner) fitted on {arms['treated']:,} treated and {arms['held out']:,} "
                  f"held-out outcomes, and {len(others):,} account(s) of the same dates not on a call list -> "
                  f"{path}; `churnml score` now adds the expected revenue saved", highlight=False)  # fmt: skip
    effects = fitted.play_effects
    for play in effects.plays.values():
        console.print(f"  {play.play}: removes {play.relative_reduction:.0%} of its accounts' churn ({play.treated:,} "
                      f"treated, {play.control:,} held out)", highlight=False)  # fmt: skip
    console.print(
        f"  a play not seen yet: {effects.mean_relative_reduction:.0%} (the mean play)", highlight=False
    )


def _print_impact(report) -> None:  # noqa: ANN001
    from churnml.impact.report import report_rows

    if not report.holdouts_enabled:
        console.print("[yellow]holdouts are off[/] (CHURNML_HOLDOUT_SHARE=0): new calls cannot be measured")
    table = Table(title="Impact of the plays: save rate treated against held out (95% interval)")
    columns = {"play": "play", "treated": "treated", "control": "held out", "treated_rate": "saved (treated)",
               "control_rate": "saved (held out)", "effect": "difference", "interval": "95% interval",
               "mde": "detectable", "revenue_kept": "revenue kept", "roi": "ROI", "verdict": "verdict",
               "logged": "plays logged"}  # fmt: skip
    for label in columns.values():
        table.add_column(label, justify="left" if label in ("play", "verdict", "95% interval") else "right")
    for row in report_rows(report):
        table.add_row(*(row[k] for k in columns))
    console.print(table)
    if report.overall.control_logged:
        console.print(f"[yellow]{report.overall.control_logged:,} held-out account(s) have a play logged within "
                      "their horizon: contacted although held out, they make the difference look smaller[/]",
                      highlight=False)  # fmt: skip
    console.print(f"{report.pending:,} assignment(s) wait for their horizon to pass" +
                  ("" if report.overall.cost is not None else "; set CHURNML_PLAY_COST for ROI"), highlight=False)  # fmt: skip
