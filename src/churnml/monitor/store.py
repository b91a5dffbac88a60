"""Monitoring history: every run's estimates, realised figures and drift, kept per model and date.

A DuckDB file beside the workspace (``reports/monitoring.duckdb``), rewritten atomically on each run
with the earlier runs' rows kept: the estimates made at a date stay beside the realised figures that
arrive a horizon later, and the model health page reads both. A run at the same date for the same model
version replaces that date's rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from churnml.engine import write_tables
from churnml.monitor.run import MonitorReport

__all__ = ["TABLES", "read_history", "save_report"]

TABLES = ("monitor_runs", "estimates", "realised", "drift", "volume")


def _frames(report: MonitorReport, model_version: str, run_id: str) -> dict[str, pd.DataFrame]:
    stamp = pd.Timestamp.now(tz="UTC").tz_localize(None)
    key = {"model_version": model_version, "as_of": report.as_of}
    runs = pd.DataFrame([{**key, "run_at": stamp, "rows": report.rows, "retrain": report.retrain,
                          "reasons": json.dumps(report.reasons), "mlflow_run_id": run_id}])  # fmt: skip
    estimates = pd.DataFrame([{**key, "metric": e.metric, "value": e.value, "low": e.low, "high": e.high}
                              for e in report.estimates.values()])  # fmt: skip
    realised = report.history.rename(columns={"as_of": "date"}).assign(
        model_version=model_version, measured_at=stamp
    )
    drift = report.drift.assign(**key, new_levels=report.drift["new_levels"].map(json.dumps))
    volume = report.volume.assign(**key)
    return {
        "monitor_runs": runs,
        "estimates": estimates,
        "realised": realised,
        "drift": drift,
        "volume": volume,
    }


def read_history(path: Path) -> dict[str, pd.DataFrame]:
    """Every table of the monitoring file (empty when there is none yet)."""
    if not Path(path).is_file():
        return {}
    with duckdb.connect(str(path), read_only=True) as con:
        names = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        return {t: con.execute(f"SELECT * FROM {t}").df() for t in TABLES if t in names}


def save_report(path: Path, report: MonitorReport, model_version: str, run_id: str = "") -> Path:
    """Add a run to the history (replacing the same model and date), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = read_history(path)
    new = _frames(report, model_version, run_id)
    tables = {}
    for name, frame in new.items():
        before = old.get(name)
        if before is not None and len(before):
            if name == "realised":  # realised figures per date: the latest measurement wins
                keep = ~(
                    before["model_version"].astype(str).eq(model_version) & before["date"].isin(frame["date"])
                )
            else:
                keep = ~(
                    before["model_version"].astype(str).eq(model_version) & before["as_of"].eq(report.as_of)
                )
            frame = pd.concat([before[keep], frame], ignore_index=True)
        tables[name] = frame
    return write_tables(path, tables)
