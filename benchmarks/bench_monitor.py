"""Does monitoring see what happened? Drift, estimated against realised performance, on planted scenarios.

`python benchmarks/bench_monitor.py [--customers 12000] [--months 24] [--drift-month 14] [--json FILE]`

Three simulated businesses (`churnml simulate --drift ...`), the same seed: no drift; a covariate shift
(half the signups from the drift month take a new plan and use the product differently, churn follows
the same drivers); a concept drift (the drivers' weights change). Each trains a model as `churnml train`
does on the observation dates before the drift month (their labels end before it), then every later
monthly date is a chunk: the population scored there is compared with the training population (drift),
its performance is estimated from the probabilities (CBPE), and, its labels known here, realised.

- ``auc_estimate_abs_error``: mean |estimated - realised ROC-AUC| over the covariate-shift chunks;
- ``band_coverage``: share of those chunks whose 95% band holds the realised ROC-AUC;
- ``false_alarm_rate``: share of chunks without drift (every chunk of the no-drift business) on which
  `churnml monitor` would recommend retraining (a drift alarm, or realised performance further from its
  estimate than chance allows), with the bars of training/config.yaml;
- ``concept_drift_detected_within_horizon``: a concept-drift chunk dated within one horizon of the
  drift's start has its realised ROC-AUC, PR-AUC or churn rate further from the estimate than chance
  allows (what `monitor` flags);
- ``drift_seconds_1m_rows``: the drift table on 1M rows x ~150 features, against a straightforward pandas
  PSI (`pd.cut` per column) on the same rows in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from churnml.config import Settings, repo_root
from churnml.data import load_dataset
from churnml.engine import connect
from churnml.features.batch import training_table
from churnml.features.definitions import family
from churnml.features.profile import PREDICTION
from churnml.labels import build_labels, label_margin
from churnml.modeling import load_train_config, spec_task, train_model
from churnml.monitor.drift import DriftSettings, drift_table
from churnml.monitor.estimate import CHECKED, realised_performance
from churnml.monitor.run import estimate_for, load_monitor_config, score_rows
from churnml.simulate import SimulationConfig, simulate
from churnml.spec import load_spec


def run_scenario(drift: str | None, args: argparse.Namespace, work: Path) -> pd.DataFrame:
    """One row per chunk date after training: estimate, band, realised, alarms."""
    data = work / (drift or "none")
    simulate(SimulationConfig(customers=args.customers, months=args.months, seed=args.seed, drift=drift,
                              drift_month=args.drift_month), data)  # fmt: skip
    spec = load_spec(data / "spec.yaml")
    start = pd.Timestamp(spec.observation.start) - pd.DateOffset(months=3)  # the simulation's first month
    drift_start = start + pd.DateOffset(months=args.drift_month)
    margin = label_margin(spec)
    train_end = (drift_start - margin).to_period("M").to_timestamp()  # its labels end before the drift
    monitor = load_monitor_config(repo_root() / "training" / "config.yaml")  # the bars `churnml monitor` uses
    config = load_train_config(repo_root() / "training" / "config.yaml").model_copy(
        update={"trials": args.trials}
    )
    with connect(Settings(home=work, duckdb_memory_limit="6GB")) as con:
        tables = load_dataset(con, spec)
        observed = spec.model_copy(
            update={"observation": spec.observation.model_copy(update={"end": train_end.date()})}
        )
        table, fs = training_table(tables, observed)
        model = train_model(table, fs, spec_task(spec), config).model
        fs = model.feature_set  # with the columns fitted at training (BG/NBD), if any
        labels = build_labels(tables, spec)
        labels = labels[labels["churned"].notna() & (labels["observation_date"] > train_end)]
        calendar = {i.name for i in model.catalogue if family(i.family).grows_with_time}
        rows = []
        for date, chunk in labels.groupby("observation_date"):
            features, p = score_rows(
                tables, model, chunk[["customer_id", "observation_date"]].reset_index(drop=True)
            )
            y = chunk["churned"].to_numpy(int)
            estimates = estimate_for(model, p, config.capacity, {"high": 0.5, "medium": 0.2})
            realised = realised_performance(y, p, config.capacity)
            est, real = estimates["roc_auc"], realised["roc_auc"]
            rate = estimates["churn_rate"]
            settings = replace(monitor.drift_settings(), seed=int(date.month))
            table_ = drift_table(model.profile, features, p, settings, calendar, date)
            off = [m for m in CHECKED if estimates[m].contradicted_by(realised[m], monitor.performance_alpha)]
            alarms = table_[table_["alarm"]]
            rows.append({"scenario": drift or "none", "date": date, "rows": len(y), "churners": int(y.sum()),
                         "estimated": est.value, "low": est.low, "high": est.high, "realised": real,
                         "after_drift": date >= drift_start, "drift_alarms": len(alarms),
                         "drifted": ", ".join(alarms["column"].head(5)), "prediction_drift": bool(
                             table_.loc[table_["column"] == PREDICTION, "alarm"].any()),
                         "in_band": est.low <= real <= est.high, "off_estimate": ", ".join(off),
                         "churn_rate": realised["churn_rate"], "churn_rate_estimated": rate.value})  # fmt: skip
    out = pd.DataFrame(rows)
    out.attrs["drift_start"] = drift_start
    out.attrs["horizon"] = pd.Timedelta(days=spec.observation.horizon_days)
    out.attrs["features"] = (table, model)
    return out


def drift_speed(table: pd.DataFrame, model, rows: int = 1_000_000) -> tuple[float, float]:  # noqa: ANN001
    """Seconds for the drift table on ``rows`` rows, and for a plain pandas PSI on the same rows."""
    cols = [c for c in model.feature_names if c in table]
    big = table[cols].sample(rows, replace=True, random_state=0).reset_index(drop=True)
    p = np.random.default_rng(0).random(rows)
    began = time.perf_counter()
    drift_table(model.profile, big, p, DriftSettings())
    ours = time.perf_counter() - began
    began = time.perf_counter()
    for c in cols:  # the straightforward way: re-cut every column, count, compare
        if c in model.feature_set.categorical_columns:
            big[c].value_counts(normalize=True)
            continue
        ref = model.profile.columns[c]
        edges = [-np.inf, *ref.edges, np.inf]
        pd.cut(pd.to_numeric(big[c]), edges, duplicates="drop").value_counts(normalize=True, sort=False)
    return ours, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=12_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--drift-month", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    began = time.perf_counter()
    results = {s: run_scenario(s, args, work) for s in (None, "covariate", "concept")}
    pd.set_option("display.width", 200)
    for name, frame in results.items():
        print(f"\n{name or 'no drift'} (drift from {frame.attrs['drift_start'].date()}):")
        print(frame.drop(columns=["scenario"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    covariate = results["covariate"]
    shifted = covariate[covariate["after_drift"]]
    error = float((shifted["estimated"] - shifted["realised"]).abs().mean())
    coverage = float(
        ((shifted["low"] <= shifted["realised"]) & (shifted["realised"] <= shifted["high"])).mean()
    )
    half_width = float(((shifted["high"] - shifted["low"]) / 2).mean())
    quiet = results[None]
    alarms = (quiet["drift_alarms"] > 0) | (quiet["off_estimate"] != "") | quiet["prediction_drift"]
    concept = results["concept"]
    start, horizon = concept.attrs["drift_start"], concept.attrs["horizon"]
    early = concept[(concept["date"] >= start) & (concept["date"] <= start + horizon)]
    detected = bool((early["off_estimate"] != "").any())
    table, model = covariate.attrs["features"]
    ours, plain = drift_speed(table, model)
    print(f"\ncovariate shift, {len(shifted)} chunks: mean |estimated - realised ROC-AUC| {error:.4f}; "
          f"band covers the realised value in {coverage:.0%} (mean half-width {half_width:.3f})")  # fmt: skip
    print(f"no drift, {len(quiet)} chunks: false alarms {alarms.mean():.0%}")
    print(f"concept drift: flagged by realised performance within one horizon of its start: {detected}")
    print(f"drift on 1M rows x {len(model.feature_names)} features: {ours:.1f} s (plain pandas PSI {plain:.1f} s, "
          f"{plain / ours:.1f}x); whole run {time.perf_counter() - began:.0f} s")  # fmt: skip
    figures = {"auc_estimate_abs_error": error, "band_coverage": coverage, "band_half_width": half_width, "false_alarm_rate": float(alarms.mean()),
               "concept_drift_detected_within_horizon": detected, "drift_seconds_1m_rows": ours,
               "plain_pandas_psi_seconds_1m_rows": plain}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
