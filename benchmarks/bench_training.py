"""Tuning cost against plain LightGBM fits of the same rows, measured side by side in one run.

`python benchmarks/bench_training.py [--rows 24000] [--features 26] [--trials 15] [--folds 5] [--json FILE]`

Issue 20's target: 15 Optuna trials of 5-fold cross-validation (`churnml.modeling.tune_lightgbm`, as
`churnml train` runs it) cost at most 1.3x as much as 75 plain LightGBM fits of the same rows with early
stopping: `lgb.train` with LightGBM's defaults (all cores, learning rate 0.1, 31 leaves), the datasets
built for each fit, early stopping after 50 rounds without a better validation loss, as a hand-written
loop would do it.

The machine may be shared, so the two are interleaved: after each trial, the plain fits of one
repetition (one per fold) run, and their time is taken out of the tuning's. The plain fits are also
timed on one thread, the fairer baseline when other processes keep a core busy. A perfectly separable
table of the same shape is then tuned alone: it must finish in seconds (early stopping used never to
fire on a perfect fit).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from churnml.features.sets import FeatureSet
from churnml.model import encode_features
from churnml.modeling import TrainConfig, TuningRun, tune_lightgbm

CATEGORICAL = 4


def make_table(
    rows: int, features: int, seed: int, separable: bool = False
) -> tuple[pd.DataFrame, np.ndarray, FeatureSet]:
    """A churn-like table: numbers with missing values and a few categories, churn ~15%, nonlinear signal."""
    rng = np.random.default_rng(seed)
    n_num = features - CATEGORICAL
    x = rng.normal(size=(rows, n_num))
    x[rng.random((rows, n_num)) < 0.05] = np.nan
    frame = pd.DataFrame(x, columns=[f"n{i}" for i in range(n_num)])
    for i in range(CATEGORICAL):
        frame[f"c{i}"] = rng.choice([f"l{k}" for k in range(3 + 3 * i)], rows).astype(object)
    v = np.nan_to_num(x)
    if separable:  # two axis-aligned cuts decide the label: a tree ensemble can fit it perfectly
        y = ((v[:, 0] > 0.8) | ((v[:, 1] < -0.5) & (frame["c0"] == "l1"))).to_numpy(int)
    else:
        logit = 1.1 * v[:, 0] - 0.7 * v[:, 1] ** 2 + 0.6 * np.sin(2 * v[:, 2]) + 0.4 * v[:, 3] * v[:, 4]
        logit += 0.5 * (frame["c0"] == "l1") - 1.9
        y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    fs = FeatureSet(
        (), (), table_numeric=tuple(frame.columns[:n_num]), table_categorical=tuple(frame.columns[n_num:])
    )
    categories = {c: sorted(frame[c].unique()) for c in fs.categorical_columns}
    return encode_features(frame, fs, categories), np.asarray(y), fs


def plain_fits(x: np.ndarray, y: np.ndarray, folds: list, fs: FeatureSet, threads: int | None) -> float:
    """Seconds for one plain LightGBM fit per fold: datasets built, defaults, early stopping, a prediction."""
    params = {"objective": "binary", "verbosity": -1} | ({"num_threads": threads} if threads else {})
    began = time.perf_counter()
    for tr, va in folds:
        train = lgb.Dataset(x[tr], y[tr], categorical_feature=list(fs.categorical_columns), feature_name=fs.columns,
                            params={"verbosity": -1})  # fmt: skip
        valid = lgb.Dataset(x[va], y[va], reference=train, params={"verbosity": -1})
        booster = lgb.train(params, train, num_boost_round=2000, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(50, verbose=False)])  # fmt: skip
        booster.predict(x[va], num_iteration=booster.best_iteration)
    return time.perf_counter() - began


def side_by_side(args: argparse.Namespace, separable: bool = False) -> dict[str, float]:
    """Tune, with one repetition of the plain fits (default threads, then one thread) after each trial."""
    x, y, fs = make_table(args.rows, args.features, args.seed, separable)
    folds = list(StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed).split(x, y))
    data = x.to_numpy()
    plain = {"default": 0.0, "one_thread": 0.0}

    def after_trial(done: int, total: int) -> None:
        plain["default"] += plain_fits(data, y, folds, fs, None)
        plain["one_thread"] += plain_fits(data, y, folds, fs, 1)

    config = TrainConfig(trials=args.trials, timeout_seconds=None, seed=args.seed)
    began = time.perf_counter()
    study = tune_lightgbm(
        folds, x, y, fs, config, TuningRun(None, "bench", None if separable else after_trial)
    )
    tuning = time.perf_counter() - began - plain["default"] - plain["one_thread"]
    states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    return {"tuning_seconds": tuning, "plain_seconds": plain["default"], "plain_one_thread_seconds": plain["one_thread"],
            "best_pr_auc": study.best_value, "trials": states, "churn_rate": float(y.mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=24_000)
    parser.add_argument("--features", type=int, default=26)
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Write the figures to this file.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fits = args.trials * args.folds
    print(f"{args.rows:,} rows x {args.features} features, {args.trials} trials x {args.folds} folds "
          f"against {fits} plain LightGBM fits, interleaved", flush=True)  # fmt: skip
    run = side_by_side(args)
    ratio = run["tuning_seconds"] / run["plain_seconds"]
    ratio_one = run["tuning_seconds"] / run["plain_one_thread_seconds"]
    print(f"  tuning                        {run['tuning_seconds']:7.1f} s  (trials: {run['trials']}, best CV PR-AUC "
          f"{run['best_pr_auc']:.3f}, churn rate {run['churn_rate']:.1%})")  # fmt: skip
    print(
        f"  {fits} plain fits (all cores)     {run['plain_seconds']:7.1f} s  -> tuning {ratio:.2f}x (target <= 1.3x)"
    )
    print(
        f"  {fits} plain fits (one thread)    {run['plain_one_thread_seconds']:7.1f} s  -> tuning {ratio_one:.2f}x"
    )
    separable = side_by_side(args, separable=True)
    print(f"  perfectly separable table: tuning {separable['tuning_seconds']:.1f} s "
          f"(best CV PR-AUC {separable['best_pr_auc']:.3f}, trials: {separable['trials']})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "rows": args.rows, "features": args.features, "trials": args.trials, "folds": args.folds,
            "tuning_seconds": run["tuning_seconds"], "plain_lightgbm_seconds": run["plain_seconds"],
            "ratio_to_plain_lightgbm": ratio, "plain_lightgbm_one_thread_seconds": run["plain_one_thread_seconds"],
            "ratio_to_plain_lightgbm_one_thread": ratio_one, "best_cv_pr_auc": run["best_pr_auc"],
            "separable_tuning_seconds": separable["tuning_seconds"], "separable_best_cv_pr_auc": separable["best_pr_auc"],
        }, indent=1))  # fmt: skip
        print(f"figures -> {args.json}")


if __name__ == "__main__":
    main()
