"""The model health page's data: what `churnml monitor` kept in ``reports/monitoring.duckdb``.

The latest run's verdict and reasons, its drift table, and per date the performance estimated before
the labels (with its band) beside the realised figure once the labels matured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from churnml.monitor.store import read_history
from churnml.workspace.pages import charts
from churnml.workspace.pages.views import day

__all__ = ["METRICS", "model_health"]

METRICS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    return [] if frame is None or frame.empty else frame.to_dict("records")


def _performance(history: dict[str, pd.DataFrame], version: str) -> dict[str, list[dict[str, Any]]]:
    """Per metric, one row per date: estimated (band) on the rows whose labels matured, what a run at that
    date estimated then for the accounts it scored (stored per date), and realised."""
    realised = history.get("realised")
    estimates = history.get("estimates")
    out: dict[str, list[dict[str, Any]]] = {}
    for metric in METRICS:
        rows: dict[str, dict[str, Any]] = {}
        if realised is not None and len(realised):
            mine = realised[
                (realised["metric"] == metric) & (realised["model_version"].astype(str) == version)
            ]
            for r in mine.itertuples():
                rows[day(r.date)] = {"date": day(r.date), "estimated": r.estimated, "low": r.low, "high": r.high,
                                     "realised": r.realised, "estimated_then": None}  # fmt: skip
        if estimates is not None and len(estimates):
            mine = estimates[
                (estimates["metric"] == metric) & (estimates["model_version"].astype(str) == version)
            ]
            for r in mine.itertuples():
                row = rows.setdefault(day(r.as_of), {"date": day(r.as_of), "estimated": r.value, "low": r.low,
                                                     "high": r.high, "realised": None})  # fmt: skip
                row["estimated_then"] = r.value
        out[metric] = sorted(rows.values(), key=lambda r: r["date"])
    return out


def model_health(path: Path) -> dict[str, Any] | None:
    """The page's data, or None when `churnml monitor` has not run yet."""
    history = read_history(path)
    runs = history.get("monitor_runs")
    if runs is None or runs.empty:
        return None
    latest = runs.sort_values(["run_at", "as_of"]).iloc[-1]
    version, as_of = str(latest["model_version"]), latest["as_of"]
    drift = history.get("drift")
    if drift is not None and len(drift):
        drift = drift[(drift["model_version"].astype(str) == version) & (drift["as_of"] == as_of)]
        drift = drift.sort_values(["alarm", "drifted", "value"], ascending=False)
    performance = _performance(history, version)
    chart_svgs = {}
    for metric, rows in performance.items():
        if rows:
            values = {k: [r[k] for r in rows] for k in ("estimated", "low", "high", "realised")}
            chart_svgs[metric] = charts.estimate_chart(
                [r["date"] for r in rows], values["estimated"], values["low"], values["high"], values["realised"],
                f"{METRICS[metric]}: estimated against realised", axis_label=METRICS[metric],
                described_by=f"{metric}-table",
            )  # fmt: skip
    reasons = json.loads(latest["reasons"]) if isinstance(latest["reasons"], str) else []
    return {"run": {"as_of": as_of, "model_version": version, "retrain": bool(latest["retrain"]), "reasons": reasons,
                    "rows": int(latest["rows"]), "run_at": latest["run_at"], "mlflow_run_id": latest.get("mlflow_run_id")},
            "drift": _records(drift), "performance": performance, "charts": chart_svgs, "metrics": METRICS,
            "finite": lambda v: v is not None and isinstance(v, float | int) and math.isfinite(v)}  # fmt: skip
