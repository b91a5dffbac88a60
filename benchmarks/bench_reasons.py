"""Right cause, per account: do the reasons name the simulator's planted driver of each churner?

`python benchmarks/bench_reasons.py [--customers 20000] [--months 18] [--trials 15] [--json FILE]`

Simulates a business (`churnml simulate`; the simulator records each churner's primary driver in
``ground_truth.parquet``), trains as `churnml train --spec` does (training/config.yaml), and explains
the churners of the out-of-time test date that have a planted primary driver. A driver counts as
named when one of the account's risk-raising reasons (its problems, `churnml.explain`) is a signal
that expresses it (`DRIVER_SIGNALS`: the event types and account facts the simulator's driver shapes).

Figures, with the same run's baseline: one reason per feature column ranked by SHAP, as churnml did
before reasons were grouped by signal and checked against retained accounts.

- ``driver_top3_share``: churners whose driver is among their top 3 problems;
- ``driver_top1_share``: ... is their first problem;
- ``lint_violations``: violations of the reason lint (`churnml.explain.lint`) over every sentence of the
  workspace scored at the latest date (`churnml score`), all kinds of reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from churnml.config import Settings, repo_root
from churnml.data import load_dataset
from churnml.engine import connect
from churnml.explain.lint import lint_reasons
from churnml.features.batch import latest_date, training_table
from churnml.labels import label_margin
from churnml.modeling import TrainTask, load_train_config, train_model
from churnml.score import explain_scored, score_customers, score_features
from churnml.simulate import SimulationConfig, simulate
from churnml.spec import load_spec

# the reason group (`FeatureInfo.signal`: usage, billing...) through which each planted driver shows
DRIVER_SIGNALS = {
    "engagement_decline": {"usage"},
    "seat_contraction": {"account"},
    "support_friction": {"support"},
    "detractor_nps": {"feedback"},
    "failed_payment": {"billing"},
    "incomplete_onboarding": {"onboarding"},
}

# whether a churner's driver had shown in its data before the observation date: the simulator records
# the driver at the churn, up to a horizon later, and a payment that fails after the date cannot be a
# reason at it. Lenient where the data cannot tell (any fall in logins counts as a visible decline).
OBSERVABLE = {
    "failed_payment": lambda f: f["payment_failed_count_90d"] > 0,
    "seat_contraction": lambda f: f["seat_change_net_90d"] < 0,
    "support_friction": lambda f: f["support_ticket_score_min_90d"] <= 2,
    "detractor_nps": lambda f: (
        (f["nps_response_score_last"] <= 6) & (f["days_since_last_nps_response_score"] <= 183)
    ),
    "incomplete_onboarding": lambda f: f["onboarding_completed_count_total"].isna(),
    "engagement_decline": lambda f: (f["login_count_trend_ratio"] < 1) | (f["login_count_30d"] == 0),
}


def observable(rows: pd.DataFrame, drivers: list[str]) -> np.ndarray:
    return np.array([bool(OBSERVABLE[d](rows.iloc[[i]]).iloc[0]) for i, d in enumerate(drivers)])


def churners_with_driver(table: pd.DataFrame, truth: pd.DataFrame, date: pd.Timestamp) -> pd.DataFrame:
    """Rows of the test date that churned within the horizon, with the primary driver at their churn and
    every driver tied with it (``tied``: support friction and a detractor NPS weigh the same, and the
    ground truth names the first of equals)."""
    rows = table[(table["observation_date"] == date) & (table["churned"] == 1)][["customer_id"]]
    truth = truth[truth["primary_driver"] != "none"].copy()
    contributions = truth[[f"{d}_contribution" for d in DRIVER_SIGNALS]].to_numpy()
    top = contributions.max(axis=1)
    truth["tied"] = [[d for d, c in zip(DRIVER_SIGNALS, row, strict=True) if c > 0 and abs(c - t) < 1e-9]
                     for row, t in zip(contributions, top, strict=True)]  # fmt: skip
    truth = truth[["customer_id", "churn_date", "primary_driver", "tied"]]
    joined = rows.reset_index().merge(truth, on="customer_id", how="inner")
    joined = joined[joined["churn_date"] >= date].sort_values("churn_date").drop_duplicates("customer_id")
    return joined.set_index("index")


def signal_of(catalogue: list) -> dict[str, str]:
    return {i.name: i.signal or i.name for i in catalogue}


def shares(ranked: list[list[str]], drivers: list) -> tuple[float, float]:
    """Shares of churners whose driver (or any of its ties, given a list) is in the top 3 and first."""

    def groups(d: str | list[str]) -> set[str]:
        return set().union(*(DRIVER_SIGNALS[x] for x in ([d] if isinstance(d, str) else d)))

    top3 = np.mean([bool(groups(d) & set(r[:3])) for r, d in zip(ranked, drivers, strict=True)])
    top1 = np.mean([bool(r) and r[0] in groups(d) for r, d in zip(ranked, drivers, strict=True)])
    return float(top3), float(top1)


def per_column_ranking(contrib: np.ndarray, catalogue: list) -> list[list[str]]:
    """The baseline: one reason per column, the largest positive SHAP first (context included)."""
    signal = [i.signal or i.name for i in catalogue]
    out = []
    for row in contrib:
        order = [j for j in np.argsort(-row, kind="stable") if row[j] > 0][:3]
        out.append([signal[j] for j in order])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=18)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--trials", type=int, default=None, help="Optuna trials (default: training/config.yaml)"
    )
    parser.add_argument("--data", type=Path, default=None, help="simulation folder to reuse or write")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-reasons-"))
    data = args.data or work / "sim"
    began = time.perf_counter()
    if not (data / "ground_truth.parquet").is_file():
        simulate(SimulationConfig(customers=args.customers, months=args.months, seed=args.seed), data)
    config = load_train_config(repo_root() / "training" / "config.yaml")
    if args.trials:
        config = config.model_copy(update={"trials": args.trials})
    with connect(Settings(home=work)) as con:
        spec = load_spec(data / "spec.yaml")
        tables = load_dataset(con, spec)
        table, fs = training_table(tables, spec)
        task = TrainTask(
            spec.observation.horizon_days, label_margin(spec).days, event_labels=spec.event_labels
        )
        result = train_model(table, fs, task, config)
        model = result.model
        workspace = score_customers(tables, spec, model, latest_date(tables), k=5, history=1)
    trained = time.perf_counter() - began
    date = pd.Timestamp(model.metadata["test_dates"][-1])
    churners = churners_with_driver(table, pd.read_parquet(data / "ground_truth.parquet"), date)
    rows = table.loc[churners.index]
    scored = score_features(model, rows)
    contrib = model.contributions(rows)[0]
    explained = explain_scored(model, rows, scored, k=5, contributions=contrib)
    drivers = churners["primary_driver"].tolist()
    ranked = [[r.signal for r in a.problems] for a in explained]
    top3, top1 = shares(ranked, drivers)
    base3, base1 = shares(per_column_ranking(contrib, model.catalogue), drivers)
    seen = observable(rows, drivers)
    seen3, seen1 = shares(
        [r for r, v in zip(ranked, seen, strict=True) if v],
        [d for d, v in zip(drivers, seen, strict=True) if v],
    )
    tied = churners["tied"].tolist()
    tied3, tied1 = shares(ranked, tied)
    both3, both1 = shares(
        [r for r, v in zip(ranked, seen, strict=True) if v], [d for d, v in zip(tied, seen, strict=True) if v]
    )
    action = workspace.scores.set_index("customer_id")["risk_tier"] != "low"
    violations = lint_reasons(workspace.reasons, model.catalogue, action)
    by_driver = churners.assign(
        top3=[bool(DRIVER_SIGNALS[d] & {r.signal for r in a.problems[:3]}) for a, d in zip(explained, drivers, strict=True)],
        observable=seen,
    ).groupby("primary_driver")[["top3", "observable"]].agg(["size", "mean"])  # fmt: skip
    print(f"{args.customers:,} accounts x {args.months} months; model ROC-AUC {result.test_metrics['roc_auc']:.3f} "
          f"PR-AUC {result.test_metrics['pr_auc']:.3f}; {trained:.0f} s to simulate, train and score")  # fmt: skip
    print(f"churners at {date.date()} with a planted primary driver: {len(churners):,}")
    print(
        f"driver among the top 3 problems: {top3:.1%} (per-column SHAP baseline {base3:.1%}, {top3 / max(base3, 1e-9):.2f}x)"
    )
    print(
        f"driver is the first problem:     {top1:.1%} (per-column SHAP baseline {base1:.1%}, {top1 / max(base1, 1e-9):.2f}x)"
    )
    print(f"of the {seen.sum():,} ({seen.mean():.0%}) whose driver had shown in the data before the date: "
          f"top 3 {seen3:.1%}, first {seen1:.1%}")  # fmt: skip
    ties = np.mean([len(t) > 1 for t in tied])
    print(f"counting a driver tied with the primary one ({ties:.0%} of churners have ties): top 3 {tied3:.1%}, "
          f"first {tied1:.1%}; of those whose driver had shown: top 3 {both3:.1%}, first {both1:.1%}")  # fmt: skip
    print("by driver (top 3):")
    print(by_driver.to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"reason lint over {len(workspace.reasons):,} sentences of {len(workspace.scores):,} accounts: "
          f"{len(violations)} violation(s)")  # fmt: skip
    for v in violations[:10]:
        print(f"  {v.rule}: {v.customer_id}: {v.sentence!r} ({v.detail})")
    figures = {
        "driver_top3_share": top3, "driver_top1_share": top1, "lint_violations": len(violations),
        "baseline_per_column_top3_share": base3, "baseline_per_column_top1_share": base1,
        "churners_with_driver": len(churners), "driver_observable_share": float(seen.mean()),
        "driver_top3_share_observable": seen3, "driver_top1_share_observable": seen1,
        "tied_share": float(ties), "driver_top3_share_with_ties": tied3, "driver_top1_share_with_ties": tied1,
        "driver_top3_share_observable_with_ties": both3, "driver_top1_share_observable_with_ties": both1, "customers": args.customers, "test_date": str(date.date()),
        "roc_auc": result.test_metrics["roc_auc"], "pr_auc": result.test_metrics["pr_auc"],
        "by_driver_top3": {d: float(v) for d, v in by_driver[("top3", "mean")].items()},
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
