"""Every monitoring run logged to MLflow (experiment ``churnml-monitoring``), tagged with the model
version it watched, so a model's runs show its health next to how it was trained."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from churnml.config import Settings
from churnml.monitor.run import MonitorReport
from churnml.registry import MODEL_NAME, experiment_id

__all__ = ["MONITOR_EXPERIMENT", "log_monitoring"]

MONITOR_EXPERIMENT = "churnml-monitoring"


def _metrics(report: MonitorReport, now_ms: int) -> list[Metric]:
    out = [Metric("rows", float(report.rows), now_ms, 0),
           Metric("drifted_columns", float(report.drift["alarm"].sum()), now_ms, 0),
           Metric("retrain", float(report.retrain), now_ms, 0)]  # fmt: skip
    for e in report.estimates.values():
        out += [Metric(f"estimated_{e.metric}", e.value, now_ms, 0), Metric(f"estimated_{e.metric}_low", e.low, now_ms, 0),
                Metric(f"estimated_{e.metric}_high", e.high, now_ms, 0)]  # fmt: skip
    for (
        r
    ) in report.history.itertuples():  # one step per matured date (days since 1970), so they plot over time
        step = int((pd.Timestamp(r.as_of) - pd.Timestamp("1970-01-01")).days)
        out += [Metric(f"realised_{r.metric}", float(r.realised), now_ms, step),
                Metric(f"estimated_then_{r.metric}", float(r.estimated), now_ms, step)]  # fmt: skip
    return [m for m in out if m.value == m.value]  # MLflow refuses NaN on some stores


def log_monitoring(
    client: MlflowClient, settings: Settings, report: MonitorReport, model_version: str
) -> str:
    """Log one run (metrics, the drift and history tables) and return its id."""
    run = client.create_run(
        experiment_id(client, settings, MONITOR_EXPERIMENT), run_name=f"monitor-{report.as_of.date()}",
        tags={"model_name": MODEL_NAME, "model_version": model_version, "as_of": str(report.as_of.date()),
              "retrain": str(report.retrain).lower(), "reasons": "; ".join(report.reasons)[:4000]},
    )  # fmt: skip
    run_id = run.info.run_id
    try:
        now_ms = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
        client.log_batch(run_id, metrics=_metrics(report, now_ms))
        with tempfile.TemporaryDirectory() as folder:
            for name, frame in (
                ("drift", report.drift),
                ("volume", report.volume),
                ("history", report.history),
            ):
                path = Path(folder) / f"{name}.csv"
                frame.to_csv(path, index=False)
                client.log_artifact(run_id, str(path), "monitoring")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
