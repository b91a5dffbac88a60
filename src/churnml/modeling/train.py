"""Train a churn model on a labelled behaviour table: split, tune, calibrate, evaluate once.

The split follows `churnml.modeling.splits`: out of time when a purged fold fits, else held-out
customers (the run and the CLI say which). Optuna (`churnml.modeling.tuning`) maximises mean PR-AUC over
the tuning folds; the calibrator (isotonic or sigmoid, whichever has the lower held-out log loss) is
fitted on the folds' out-of-fold predictions; the final booster is refit on every development row with
the backtest's mean number of rounds, and scored once on the test rows beside the baselines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd

from churnml.evaluate import bootstrap_intervals, churn_metrics
from churnml.features.btyd import with_fitted_columns
from churnml.features.catalogue import build_catalogue
from churnml.features.profile import REFERENCE_DATES, PopulationProfile, fit_population_profile
from churnml.features.reference import FeatureReference
from churnml.features.sets import FeatureSet
from churnml.labels import label_margin
from churnml.model import ChurnModel, encode_features
from churnml.modeling.activity import bgnbd_churn_probability, fit_activity
from churnml.modeling.baselines import baseline_metrics
from churnml.modeling.calibrate import choose_calibrator, cross_fitted
from churnml.modeling.config import TrainConfig
from churnml.modeling.leaks import Leak, guard
from churnml.modeling.splits import Evaluation, Split, choose_evaluation
from churnml.modeling.tuning import (
    FitPool,
    Fold,
    TuningRun,
    binned_folds,
    inverse_churn_rate,
    lightgbm_dataset,
    search_params,
    tune_lightgbm,
)
from churnml.spec import DatasetSpec, EventLabel, InactivityChurn

if TYPE_CHECKING:  # dask is the optional 'distributed' extra
    from churnml.modeling.distributed import DaskFit

__all__ = [
    "Development",
    "development_rows",
    "spec_task",
    "tune_development",
    "TrainTask",
    "TuningRun",
    "TrainResult",
    "final_model",
    "out_of_fold",
    "retained_reference",
    "train_model",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainTask:
    """What a behaviour table is trained for, and how it may be split.

    ``purge_days``: how far past its date a row's label looks (default: the horizon; cancellation churn
    also waits out its grace period, `churnml.labels.label_margin`): the gap between training and
    validation or test dates. ``evaluation``: ``auto`` (out of time when a purged fold fits, else held-out
    customers), ``time`` or ``customers``.
    """

    horizon_days: int
    purge_days: int | None = None
    evaluation: str = "auto"
    keep_columns: tuple[str, ...] = ()  # leaking columns kept knowingly (--keep-column)
    btyd_types: tuple[str, ...] = ()  # activity types of inactivity churn: BG/NBD features and baseline
    event_labels: dict[str, EventLabel] = field(default_factory=dict)  # the spec's names, for the catalogue


def spec_task(spec: DatasetSpec, keep_columns: tuple[str, ...] = ()) -> TrainTask:
    """What `churnml train --spec` trains for: the spec's horizon, purge (horizon + grace), evaluation,
    event names, and BG/NBD features for the activity types of inactivity churn."""
    activity = tuple(spec.churn.activity_event_types) if isinstance(spec.churn, InactivityChurn) else ()
    return TrainTask(spec.observation.horizon_days, label_margin(spec).days, spec.evaluation, keep_columns,
                     activity, spec.event_labels)  # fmt: skip


@dataclass
class TrainResult:
    model: ChurnModel
    params: dict[str, object]
    test_metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    study: optuna.Study
    test_frame: pd.DataFrame  # test rows with label, MRR and calibrated probability
    oof: pd.DataFrame  # out-of-fold raw predictions used for calibration
    splits: list[Split] = field(default_factory=list)
    # 95% bootstrap intervals of the headline test metrics: how far the test set can resolve them
    test_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    cv_metrics: dict[str, float] = field(default_factory=dict)  # cross-validation on development rows
    evaluation: str = "time"  # time | customers: how the test rows were chosen
    evaluation_description: str = ""  # in words, for the CLI and the run
    leaks: tuple[Leak, ...] = ()  # columns the leak guard found (left out, or kept with --keep-column)


def retained_reference(rows: pd.DataFrame, fs: FeatureSet, description: str) -> FeatureReference:
    """How the rows' accounts that stayed look, per feature: what reasons compare an account with."""
    retained = rows[rows["churned"] == 0]
    numeric = [c for c in fs.columns if c not in fs.categorical_columns]
    return FeatureReference.fit(retained, numeric, list(fs.categorical_columns), description)


def out_of_fold(params: dict, binned: list[Fold], config: TrainConfig) -> pd.DataFrame:
    """Each fold's validation rows predicted by a booster fit on its training rows (raw probability)."""
    with FitPool(len(binned)) as pool:
        fitted = pool.fit(params, binned, config)
    parts = [pd.DataFrame({"fold": i, "row": fold.valid_rows, "raw": raw, "y": fold.y_valid})
             for i, (fold, (_, raw)) in enumerate(zip(binned, fitted, strict=True))]  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def final_model(study: optuna.Study, x: pd.DataFrame, y: np.ndarray, fs: FeatureSet, config: TrainConfig,
                pos_weight: float, dask: DaskFit | None = None) -> tuple[lgb.Booster, dict[str, object]]:  # fmt: skip
    """The best trial's parameters, refit on every development row for the backtest's mean rounds: here,
    or data-parallel on a Dask cluster (``dask``, `churnml.modeling.distributed`) with the same ones."""
    best = study.best_trial
    params = search_params(optuna.trial.FixedTrial(best.params), config, pos_weight)
    rounds = max(10, int(best.user_attrs.get("rounds", 100)))
    if dask is not None:
        from churnml.modeling.distributed import dask_booster

        booster = dask_booster(params, x, y, fs, rounds, dask)
    else:
        booster = lgb.train(params, lightgbm_dataset(x, y, fs), num_boost_round=rounds)
    return booster, {**params, "num_boost_round": rounds}


def train_model(
    table: pd.DataFrame,
    fs: FeatureSet,
    task: TrainTask,
    config: TrainConfig,
    tuning: TuningRun | None = None,
    dask: DaskFit | None = None,
) -> TrainResult:
    """Tune, calibrate and evaluate on a labelled feature table (one row per customer-date); leaking
    columns are left out first (`churnml.modeling.leaks`), found on the development rows. ``dask``: fit
    the final booster on a Dask cluster (the same parameters, the same calibrator)."""
    d = development_rows(table, fs, task, config)
    table, fs, split, dev, test = d.table, d.fs, d.split, d.dev, d.test
    categories, x, y, pos_weight = d.categories, d.x, d.y, d.pos_weight
    binned = binned_folds(split.folds, x, y, fs)
    study = tune_lightgbm(split.folds, x, y, fs, config, tuning or TuningRun(), pos_weight, binned)
    params = search_params(optuna.trial.FixedTrial(study.best_trial.params), config, pos_weight)
    oof = out_of_fold(params, binned, config)
    calibrator = choose_calibrator(oof, config.calibration)
    booster, final_params = final_model(study, x, y, fs, config, pos_weight, dask)
    model = ChurnModel(
        booster=booster, feature_set=fs, categories=categories, calibrator=calibrator,
        catalogue=build_catalogue(fs, task.event_labels),
        metadata=_metadata(split, task, config, study, final_params),
        # the latest labelled date's retained accounts, the nearest to the dates scored next: descriptive
        # (what reasons compare an account with), it changes no prediction and no test metric
        reference=retained_reference(table[table["observation_date"] == table["observation_date"].max()], fs,
                                     f"accounts that stayed at {table['observation_date'].max().date()}"),
    )  # fmt: skip
    model.profile = _population_profile(table, split, model, booster)
    result = _evaluate(model, dev, test, split, config, study, oof, final_params)
    result.leaks = d.leaks
    return result


@dataclass
class Development:
    """A behaviour table split for training: what tuning sees (``x``, ``y``, the split's folds) and
    what it must not (the test rows). A tuning worker rebuilds exactly this from the same table."""

    table: pd.DataFrame  # every row, sorted, with the fitted BG/NBD columns
    fs: FeatureSet  # without leaking columns, with the BG/NBD ones
    split: Evaluation
    dev: pd.DataFrame
    test: pd.DataFrame
    leaks: tuple[Leak, ...]
    categories: dict[str, list[str]]
    x: pd.DataFrame
    y: np.ndarray
    pos_weight: float


def development_rows(
    table: pd.DataFrame, fs: FeatureSet, task: TrainTask, config: TrainConfig
) -> Development:
    """Split, drop leaking columns (found on the development rows), fit the BG/NBD columns, encode."""
    if "churned" not in table:
        raise ValueError("training table: no 'churned' label column")
    table = table.sort_values(["observation_date", "customer_id"], kind="stable").reset_index(drop=True)
    split = choose_evaluation(table, task.purge_days or task.horizon_days, config, task.evaluation)
    dev, test = table[split.dev].reset_index(drop=True), table[split.test].reset_index(drop=True)
    if dev["churned"].nunique() < 2 or test["churned"].nunique() < 2:
        raise ValueError("training table: development and test data each need churners and non-churners")
    checked = guard(dev, fs, task.keep_columns, config.seed)
    fs, dev = fit_activity(dev, checked.feature_set, task.btyd_types, task.horizon_days)
    table, test = (with_fitted_columns(t, fs.btyd, fs.btyd_horizon_days) for t in (table, test))
    categories = {c: sorted(str(v) for v in dev[c].dropna().unique()) for c in fs.categorical_columns}
    x, y = encode_features(dev, fs, categories), dev["churned"].to_numpy(int)
    # test labels stay unseen
    return Development(table, fs, split, dev, test, checked.leaks, categories, x, y, inverse_churn_rate(y))


def tune_development(d: Development, config: TrainConfig, tuning: TuningRun) -> optuna.Study:
    """Only the tuning of `train_model`: what a worker joining a shared study runs."""
    return tune_lightgbm(d.split.folds, d.x, d.y, d.fs, config, tuning, d.pos_weight)


def _population_profile(
    table: pd.DataFrame, split: Evaluation, model: ChurnModel, booster: lgb.Booster
) -> PopulationProfile:
    """What drift is measured against (`churnml monitor`): the latest labelled dates, with the rows the
    model did not learn from (purge gap and test, or the held-out customers) marked for recalibration."""
    recent_dates = sorted(table["observation_date"].unique())[-REFERENCE_DATES:]
    recent = table["observation_date"].isin(recent_dates).to_numpy()
    rows = table[recent]
    return fit_population_profile(
        rows, model.feature_set, model.predict_proba(rows), rows["churned"].to_numpy(int),
        unseen=~split.dev[recent], importance=booster.feature_importance("gain"),
    )  # fmt: skip


def _metadata(
    split: Evaluation, task: TrainTask, config: TrainConfig, study: optuna.Study, params: dict
) -> dict:
    meta = {
        "horizon_days": task.horizon_days, "evaluation": split.kind,
        "trained_through": str(max(split.dev_dates).date()),
        "test_dates": [str(d.date()) for d in split.test_dates], "best_params": study.best_trial.params,
        "rounds": params["num_boost_round"],
    }  # fmt: skip
    if split.kind == "customers":  # promote compares only models that held out the same customers
        meta |= {
            "table_holdout": config.table_holdout,
            "id_column": "customer_id",
            "evaluation_reason": split.reason,
        }
    return meta


def _evaluate(model: ChurnModel, dev: pd.DataFrame, test: pd.DataFrame, split: Evaluation, config: TrainConfig,
              study: optuna.Study, oof: pd.DataFrame, params: dict) -> TrainResult:  # fmt: skip
    """Score the test rows once, beside the baselines on the same rows."""
    y_test = test["churned"].to_numpy(int)
    p_test = model.predict_proba(test)
    mrr = test["mrr"].to_numpy(float) if "mrr" in test else None
    test_frame = test[["customer_id", "observation_date", "churned"]].assign(probability=p_test)
    if mrr is not None:
        test_frame["mrr"] = mrr
    churn_by_bgnbd = bgnbd_churn_probability(test, model.feature_set)
    extra = {} if churn_by_bgnbd is None else {"bg_nbd": churn_by_bgnbd}
    cv = {}
    if split.kind == "customers":  # folds over customers: cross-validation metrics, cross-fitted calibration
        cv = churn_metrics(
            oof["y"].to_numpy(int), cross_fitted(model.calibrator.method, oof), capacity=config.capacity
        )
    return TrainResult(
        model=model, params=params, test_metrics=churn_metrics(y_test, p_test, mrr, config.capacity), cv_metrics=cv,
        baselines=baseline_metrics(dev, test, model.feature_set, config.capacity, extra), study=study,
        test_frame=test_frame, oof=oof, splits=split.splits,
        test_intervals=bootstrap_intervals(y_test, p_test, seed=config.seed),
        evaluation=split.kind, evaluation_description=split.description,
    )  # fmt: skip
