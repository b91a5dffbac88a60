"""Point-in-time feature throughput: `python benchmarks/bench_features.py [--customers 100000] [--months 24]`.

`--bad-rows` also validates the same events with two bad rows added (a repeat and a non-finite
value), to show what a few bad rows cost against the clean data.

Issue 3 targets: features for the simulator at 100k customers x 24 monthly dates (~50M events) at
>= 1.5M events/s end to end, <= 8 GB peak memory on 2 cores, and >= 3x a straightforward pandas
implementation measured in the same run.

Issue 24: `--engines 2000 --months 12` compares the DuckDB engine with the Spark one (the Ibis
definitions as Spark SQL, the same NumPy step per customer partition: `churnml.features.spark`) at 1x,
2x and 4x the customers: throughput of each and the ratio, and whether the two tables are equal; then
batch scoring with reasons (`churnml.score.score_and_explain`: features, calibrated probability, SHAP
reasons and plays, on the driver for DuckDB, inside the partitions for Spark) of the last date's
accounts with a model trained on the 1x data, and whether scores and reasons are equal.

Each measurement runs in its own process so peak memory (ru_maxrss) belongs to it alone:
  1. churnml on the full data: load + validate, labels, features (timed separately);
  2. churnml features on a subset of customers;
  3. a plain pandas implementation of the per-event-type features on the same subset
     (per date: filter, groupby, pivot) — the baseline for the ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnml.config import Settings
from churnml.data import load_dataset
from churnml.engine import connect
from churnml.features import build_features, infer_feature_set
from churnml.labels import build_labels
from churnml.simulate import SimulationConfig, simulate
from churnml.spec import load_spec


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Restart the peak-memory count (Linux: VmHWM), so a timed part's peak excludes the setup before it."""
    Path("/proc/self/clear_refs").write_text("5")


def _part_peak_mb() -> float:
    """Peak resident memory since `_reset_peak`."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def run_churnml(spec_path: str, home: str, queue: mp.Queue) -> None:
    con = connect(Settings(home=Path(home), duckdb_memory_limit="5GB"))
    spec = load_spec(spec_path)
    t0 = time.perf_counter()
    tables = load_dataset(con, spec)
    report = tables.report
    t1 = time.perf_counter()
    labels = build_labels(tables, spec)
    labels = labels[labels["churned"].notna()].reset_index(drop=True)
    t2 = time.perf_counter()
    fs = infer_feature_set(tables, spec)
    table = build_features(tables, labels[["customer_id", "observation_date"]], fs)
    t3 = time.perf_counter()
    queue.put({
        "events": report.tables["events"].clean, "rows": len(table), "columns": len(fs.columns),
        "dates": labels["observation_date"].nunique(),
        "load": t1 - t0, "labels": t2 - t1, "features": t3 - t2, "peak_mb": _peak_mb(),
    })  # fmt: skip


def _pandas_features(events: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The straightforward way: for each date, filter the events, group, pivot."""
    out = []
    types = sorted(events["event_type"].unique())
    for t, at_date in rows.groupby("observation_date"):
        past = events[events["timestamp"] < t]
        age = (t - past["timestamp"]).dt.total_seconds() / 86400
        window = past[age <= 90].assign(age=age[age <= 90], day=lambda f: f["timestamp"].dt.floor("D"))
        feats = {}
        for w in (7, 30, 90):
            feats[f"count_{w}d"] = window[window["age"] <= w].groupby(["customer_id", "event_type"]).size()
        prev = (
            window[(window["age"] > 30) & (window["age"] <= 60)].groupby(["customer_id", "event_type"]).size()
        )
        last30 = window[window["age"] <= 30]
        feats["active_days_30d"] = last30.groupby(["customer_id", "event_type"])["day"].nunique()
        feats["trend_delta"] = feats["count_30d"].sub(prev, fill_value=0)
        feats["trend_ratio"] = feats["count_30d"] / prev
        feats["value_sum_30d"] = last30.groupby(["customer_id", "event_type"])["value"].sum()
        feats["value_sum_90d"] = window.groupby(["customer_id", "event_type"])["value"].sum()
        feats["value_mean_30d"] = last30.groupby(["customer_id", "event_type"])["value"].mean()
        feats["value_mean_90d"] = window.groupby(["customer_id", "event_type"])["value"].mean()
        last = past.sort_values("timestamp").groupby(["customer_id", "event_type"]).last()
        feats["days_since_last"] = (t - last["timestamp"]).dt.total_seconds() / 86400
        feats["last_value"] = last["value"]
        wide = pd.DataFrame(feats).unstack("event_type")
        wide.columns = [f"{e}_{f}" for f, e in wide.columns]
        merged = at_date[["customer_id"]].merge(wide, left_on="customer_id", right_index=True, how="left")
        out.append(merged.assign(observation_date=t))
    assert len(types) > 0
    return pd.concat(out, ignore_index=True)


def run_pandas(data_dir: str, queue: mp.Queue) -> None:
    con = connect(Settings(home=Path(data_dir), duckdb_memory_limit="2GB"))
    spec = load_spec(Path(data_dir) / "spec.yaml")
    tables = load_dataset(con, spec)
    labels = build_labels(tables, spec)
    rows = labels[labels["churned"].notna()][["customer_id", "observation_date"]]
    con.close()
    _reset_peak()
    began = time.perf_counter()
    events = pd.read_parquet(Path(data_dir) / "events.parquet").astype(
        {"customer_id": str, "event_type": str}
    )
    table = _pandas_features(events, rows)
    queue.put({"seconds": time.perf_counter() - began, "rows": len(table), "peak_mb": _part_peak_mb()})


def run_churnml_subset(data_dir: str, queue: mp.Queue) -> None:
    con = connect(Settings(home=Path(data_dir), duckdb_memory_limit="2GB"))
    spec = load_spec(Path(data_dir) / "spec.yaml")
    tables = load_dataset(con, spec)
    labels = build_labels(tables, spec)
    rows = labels[labels["churned"].notna()][["customer_id", "observation_date"]].reset_index(drop=True)
    _reset_peak()
    began = time.perf_counter()
    table = build_features(tables, rows, infer_feature_set(tables, spec))
    queue.put({"seconds": time.perf_counter() - began, "rows": len(table), "peak_mb": _part_peak_mb()})


def run_validate(spec_path: str, home: str, queue: mp.Queue) -> None:
    con = connect(Settings(home=Path(home), duckdb_memory_limit="5GB"))
    began = time.perf_counter()
    report = load_dataset(con, load_spec(spec_path), quarantine_dir=Path(home) / "quarantine").report
    queue.put({"seconds": time.perf_counter() - began, "quarantined": report.tables["events"].quarantined})


def run_engines(data_dir: str, master: str, partitions: int, model_dir: str, queue: mp.Queue) -> None:
    """The same feature table on DuckDB (this process) and on Spark (customer partitions, mapInArrow),
    then the same scores and reasons of the accounts at the last date."""
    from churnml.features.batch import latest_date, scoring_rows
    from churnml.features.spark import SparkFeatures, build_features_spark, spark_session
    from churnml.model import ChurnModel
    from churnml.score import RiskPolicy, score_and_explain

    con = connect(Settings(home=Path(data_dir), duckdb_memory_limit="2GB"))
    spec = load_spec(Path(data_dir) / "spec.yaml")
    tables = load_dataset(con, spec)
    labels = build_labels(tables, spec)
    rows = labels[labels["churned"].notna()][["customer_id", "observation_date"]].reset_index(drop=True)
    fs = infer_feature_set(tables, spec)
    began = time.perf_counter()
    duck = build_features(tables, rows, fs)
    duck_s = time.perf_counter() - began
    spark = spark_session(master, Path(data_dir) / "spark-tmp")
    began = time.perf_counter()
    spk = build_features_spark(spark, tables, rows, fs, partitions)
    spark_s = time.perf_counter() - began
    same = bool(
        (pd.util.hash_pandas_object(duck, index=False) == pd.util.hash_pandas_object(spk, index=False)).all()
    )
    if not Path(model_dir).exists():  # the 1x run trains the model every scale scores with
        _train(tables, spec, duck, labels, Path(model_dir))
    model = ChurnModel.load(Path(model_dir))
    accounts = scoring_rows(tables, spec, latest_date(tables))
    timed = {}
    for engine, build in (("duckdb", build_features), ("spark", SparkFeatures(spark, partitions))):
        began = time.perf_counter()
        timed[engine] = score_and_explain(tables, accounts, model, RiskPolicy(), 5, build=build)
        timed[f"{engine}_s"] = time.perf_counter() - began
    spark.stop()
    a, b = timed["duckdb"], timed["spark"]
    same_scores = a.scored.equals(b.scored) and [r.to_json() for r in a.explained] == [
        r.to_json() for r in b.explained
    ]
    queue.put({"events": tables.report.tables["events"].clean, "rows": len(rows), "duckdb": duck_s,
               "spark": spark_s, "same": same, "scored_accounts": len(accounts), "score_duckdb": timed["duckdb_s"],
               "score_spark": timed["spark_s"], "score_partitions": b.partitions, "same_scores": bool(same_scores)})  # fmt: skip


def _train(tables, spec, features: pd.DataFrame, labels: pd.DataFrame, folder: Path) -> None:  # noqa: ANN001
    """A quick model (4 trials) on the labelled rows, saved to ``folder``."""
    from churnml.labels import label_margin
    from churnml.modeling import TrainConfig, TrainTask, train_model

    labelled = labels[labels["churned"].notna()].reset_index(drop=True)
    table = features.assign(churned=labelled["churned"].astype("int8").to_numpy(),
                            churn_date=labelled["churn_date"].to_numpy())  # fmt: skip
    fs = infer_feature_set(tables, spec)
    task = TrainTask(spec.observation.horizon_days, purge_days=label_margin(spec).days)
    train_model(table, fs, task, TrainConfig(trials=4, backtest_folds=2)).model.save(folder)


def engine_scaling(base_customers: int, months: int, master: str, partitions: int, tmp: str) -> dict:
    """Features at 1x, 2x and 4x the customers on DuckDB and on Spark: throughput and their ratio."""
    figures = {}
    print(f"engines: features at 1x/2x/4x of {base_customers:,} customers x {months} months, Spark {master}")
    for scale in (1, 2, 4):
        data = Path(tmp) / f"scale{scale}"
        simulate(SimulationConfig(customers=base_customers * scale, months=months, seed=0), data)
        r = _in_child(run_engines, str(data), master, partitions, str(Path(tmp) / "model"))
        print(f"  {scale}x {r['events']:>11,} events {r['rows']:>8,} rows   duckdb {r['duckdb']:6.1f} s "
              f"{r['events'] / r['duckdb']:>11,.0f} events/s   spark {r['spark']:6.1f} s "
              f"{r['events'] / r['spark']:>11,.0f} events/s   spark/duckdb time {r['spark'] / r['duckdb']:5.1f}x"
              f"   same table: {r['same']}")  # fmt: skip
        print(f"     scoring {r['scored_accounts']:>8,} accounts with reasons   duckdb {r['score_duckdb']:6.1f} s "
              f"{r['scored_accounts'] / r['score_duckdb']:>8,.0f} accounts/s   spark {r['score_spark']:6.1f} s "
              f"{r['scored_accounts'] / r['score_spark']:>8,.0f} accounts/s ({r['score_partitions']} partitions)"
              f"   spark/duckdb time {r['score_spark'] / r['score_duckdb']:5.1f}x   same scores and reasons: "
              f"{r['same_scores']}")  # fmt: skip
        figures[f"{scale}x"] = {"events": r["events"], "duckdb_events_per_second": r["events"] / r["duckdb"],
                                "spark_events_per_second": r["events"] / r["spark"],
                                "spark_to_duckdb_time": r["spark"] / r["duckdb"], "same_table": bool(r["same"]),
                                "scored_accounts": r["scored_accounts"],
                                "duckdb_scored_accounts_per_second": r["scored_accounts"] / r["score_duckdb"],
                                "spark_scored_accounts_per_second": r["scored_accounts"] / r["score_spark"],
                                "spark_to_duckdb_scoring_time": r["score_spark"] / r["score_duckdb"],
                                "same_scores_and_reasons": bool(r["same_scores"])}  # fmt: skip
    return figures


def _with_bad_rows(src: Path, dst: Path) -> None:
    """The same data with two bad events appended: a repeated row and a non-finite value."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("customers", "subscriptions"):
        (dst / f"{name}.parquet").symlink_to((src / f"{name}.parquet").resolve())
    (dst / "spec.yaml").write_text((src / "spec.yaml").read_text())  # a copy: its paths are relative
    events = f"read_parquet('{src / 'events.parquet'}')"
    con = connect(Settings(home=dst, duckdb_memory_limit="4GB"))
    con.execute(
        f"COPY (SELECT * FROM {events} UNION ALL (SELECT * FROM {events} LIMIT 1 OFFSET 1000) "
        f"UNION ALL (SELECT * REPLACE ('inf'::DOUBLE AS value) FROM {events} LIMIT 1 OFFSET 2000)) "
        f"TO '{dst / 'events.parquet'}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)"
    )
    con.close()


def _in_child(target, *args) -> dict:  # noqa: ANN001
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _subset(src: Path, dst: Path, n: int) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    keep = pq.read_table(src / "customers.parquet", columns=["customer_id"])["customer_id"].to_pylist()[:n]
    for name in ("customers", "events", "subscriptions"):
        table = pq.read_table(src / f"{name}.parquet")
        ids = table["customer_id"]
        mask = pc.is_in(ids.cast(pa.string()), value_set=pa.array(keep))
        pq.write_table(table.filter(mask), dst / f"{name}.parquet")
    (dst / "spec.yaml").write_text((src / "spec.yaml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--subset", type=int, default=10_000, help="customers in the pandas comparison")
    parser.add_argument("--data", type=Path, help="reuse a simulated folder instead of simulating")
    parser.add_argument(
        "--bad-rows", action="store_true", help="also time validation of the data with two bad events added"
    )
    parser.add_argument("--engines", type=int, metavar="CUSTOMERS",
                        help="only compare the DuckDB and Spark engines at 1x/2x/4x of CUSTOMERS (--months)")  # fmt: skip
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--spark-partitions", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="write the headline figures here")
    args = parser.parse_args()
    if args.engines:
        with tempfile.TemporaryDirectory() as tmp:
            figures = engine_scaling(args.engines, args.months, args.spark_master, args.spark_partitions, tmp)
        if args.json:
            args.json.write_text(json.dumps({"engines": figures}, indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "sim"
            simulate(SimulationConfig(customers=args.customers, months=args.months, seed=0), data)
        full = _in_child(run_churnml, str(data / "spec.yaml"), tmp)
        sub = Path(tmp) / "subset"
        _subset(data, sub, args.subset)
        ours = _in_child(run_churnml_subset, str(sub))
        base = _in_child(run_pandas, str(sub))
        if args.bad_rows:
            _with_bad_rows(data, Path(tmp) / "bad")
            bad = _in_child(run_validate, str(Path(tmp) / "bad" / "spec.yaml"), tmp)
    events, feat = full["events"], full["features"]
    table_time = full["labels"] + feat
    end_to_end = full["load"] + table_time
    print(
        f"features: {full['rows']:,} rows x {full['columns']} features, {full['dates']} dates, {events:,} events"
    )
    print(f"  load+validate   {full['load']:7.1f} s   {events / full['load']:,.0f} events/s")
    print(f"  labels          {full['labels']:7.1f} s")
    print(f"  features        {feat:7.1f} s   {events / feat:,.0f} events/s")
    print(
        f"  labels+features {table_time:7.1f} s   {events / table_time:,.0f} events/s (validated tables -> table)"
    )
    print(
        f"  end to end      {end_to_end:7.1f} s   {events / end_to_end:,.0f} events/s (target >= 1,500,000)"
    )
    print(f"  peak RSS        {full['peak_mb']:,.0f} MiB (target <= 8,192)")
    print(f"subset of {args.subset:,} customers ({ours['rows']:,} rows), peak while computing features:")
    print(f"  churnml         {ours['seconds']:7.1f} s   peak {ours['peak_mb']:,.0f} MiB")
    print(f"  pandas baseline {base['seconds']:7.1f} s   peak {base['peak_mb']:,.0f} MiB")
    print(f"  ratio           pandas / churnml = {base['seconds'] / ours['seconds']:.1f}x (target >= 3x)")
    if args.json:  # the floor: >= 1.5M events/s end to end, <= 8 GB, >= 3x pandas
        figures = {"events": events, "events_per_second": events / end_to_end, "peak_rss_mb": full["peak_mb"],
                   "ratio_to_pandas": base["seconds"] / ours["seconds"]}  # fmt: skip
        args.json.write_text(json.dumps(figures, indent=1))
    if args.bad_rows:
        print(f"the same events with two bad rows added ({bad['quarantined']} quarantined):")
        print(
            f"  load+validate   {bad['seconds']:7.1f} s   {bad['seconds'] / full['load']:.2f}x the clean data's"
        )


if __name__ == "__main__":
    main()
