"""Train a churn model on time-ordered data: rolling-origin backtest, Optuna tuning, calibration.

Splits follow time, never a random shuffle of customer-date rows:

* the **test** set is the latest labelled observation date(s): evaluated once, out of time;
* **development** dates are those whose label window ends before the first test date (a purge gap
  of at least the horizon, so no label overlaps the test period);
* each **backtest fold** validates on one development date and trains on development dates whose
  label windows end before it (purge again).

Optuna (TPE, median pruning through LightGBM's pruning callback on the most recent fold, early
stopping inside every trial) maximises mean PR-AUC across folds; its study lives in SQLite so it can
resume. The calibrator (isotonic or sigmoid, whichever has the lower held-out log loss) is fitted on
the folds' out-of-fold predictions; the final booster is refit on all development dates.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
import yaml
from optuna_integration import LightGBMPruningCallback
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churnml.evaluate import bootstrap_intervals, churn_metrics, comparable_metric
from churnml.features.catalogue import FeatureInfo
from churnml.features.definitions import column_name, slug
from churnml.features.profile import REFERENCE_DATES, fit_population_profile
from churnml.features.reference import FeatureReference
from churnml.features.sets import FeatureSet
from churnml.model import Calibrator, ChurnModel, encode_features

__all__ = [
    "TrainConfig",
    "Split",
    "TrainResult",
    "load_train_config",
    "time_splits",
    "tune_lightgbm",
    "logistic_baseline",
    "train_model",
    "retained_reference",
]

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    """Model and search parameters (training/config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    # defaults are training/config.yaml's, so `churnml train` without --config runs the same search
    trials: int = Field(15, ge=1)
    timeout_seconds: float | None = Field(600, gt=0)
    seed: int = 0
    backtest_folds: int = Field(3, ge=1)
    test_dates: int = Field(1, ge=1, description="Latest observation dates held out as the out-of-time test.")
    max_depth: int = Field(
        6, ge=2, le=12, description="Upper bound of the depth search (explanation cost grows with depth)."
    )
    max_rounds: int = Field(2000, ge=10)
    early_stopping_rounds: int = Field(50, ge=5)
    capacity: int = Field(
        100, ge=1, description="Accounts a CSM team can call: revenue captured in the top K."
    )
    promotion_metric: str = Field(
        "pr_auc", description="roc_auc, pr_auc, log_loss, brier, ece, lift_top_decile, capture_top_decile "
        "or revenue_captured_top_K.",
    )  # fmt: skip
    promotion_margin: float = Field(0.005, ge=0)
    calibration: list[str] = Field(default_factory=lambda: ["isotonic", "sigmoid"])
    table_holdout: float = Field(
        0.2, ge=0.05, le=0.5,
        description="With --table: share of customers (a stable hash of the id) held out as the test set.",
    )  # fmt: skip

    @field_validator("promotion_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        comparable_metric(value)
        return value


def load_train_config(path: Path | None) -> TrainConfig:
    if path is None:
        return TrainConfig()
    if not Path(path).is_file():
        raise ValueError(f"training config {path} does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"training config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"training config {path}: expected a mapping of fields, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "monitor"}  # that section is `churnml.monitor`'s
    try:
        return TrainConfig.model_validate(data)
    except Exception as err:  # pydantic's message names the field
        raise ValueError(f"training config {path} is invalid: {err}") from None


@dataclass(frozen=True)
class Split:
    train_dates: tuple[pd.Timestamp, ...]
    valid_dates: tuple[pd.Timestamp, ...]


def time_splits(
    dates: list[pd.Timestamp], horizon_days: int, folds: int, test_dates: int = 1
) -> tuple[list[Split], tuple[pd.Timestamp, ...], tuple[pd.Timestamp, ...]]:
    """(backtest folds, development dates, test dates) with purge gaps of the horizon."""
    dates = sorted(pd.Timestamp(d) for d in set(dates))
    if len(dates) < test_dates + 3:
        raise ValueError(
            f"time splits: need at least {test_dates + 3} labelled observation dates, got {len(dates)}"
        )
    horizon = pd.Timedelta(days=horizon_days)
    test = tuple(dates[-test_dates:])
    dev = tuple(d for d in dates if d + horizon <= test[0])
    splits = []
    for valid in reversed(dev):
        train = tuple(d for d in dev if d + horizon <= valid)
        if len(train) >= 1:
            splits.append(Split(train, (valid,)))
        if len(splits) == folds:
            break
    if not splits:
        raise ValueError(
            f"time splits: no backtest fold fits: {len(dates)} dates, purge gap {horizon_days} days; "
            "add observation dates or shorten the horizon"
        )
    return splits, dev, test


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
    cv_metrics: dict[str, float] = field(
        default_factory=dict
    )  # --table: cross-validation on development rows


def _categories(frame: pd.DataFrame, fs: FeatureSet) -> dict[str, list[str]]:
    """Training levels of each categorical column (sorted: the code of a level never depends on row order)."""
    return {c: sorted(str(v) for v in frame[c].dropna().unique()) for c in fs.categorical_columns}


def _dataset(
    x: pd.DataFrame,
    y: np.ndarray,
    fs: FeatureSet,
    reference: lgb.Dataset | None = None,
    weight: np.ndarray | None = None,
) -> lgb.Dataset:
    return lgb.Dataset(
        x.to_numpy(), label=y, weight=weight, feature_name=list(fs.columns),
        categorical_feature=list(fs.categorical_columns), reference=reference, free_raw_data=False,
        params={"verbosity": -1},
    )  # fmt: skip


def _average_precision(preds: np.ndarray, data: lgb.Dataset) -> tuple[str, float, bool]:
    """PR-AUC of a validation set, unweighted (the pruner compares it across trials' class weights)."""
    return "average_precision", float(average_precision_score(data.get_label(), preds)), True


def _inverse_churn_rate(y: np.ndarray) -> float:
    """Non-churners per churner: the class weight that balances the two."""
    return float((y == 0).sum() / max(1, (y == 1).sum()))


def _params(trial: optuna.Trial, config: TrainConfig, pos_weight: float) -> dict[str, object]:
    return {
        "objective": "binary",
        # early stopping watches the training loss on the validation date (`_fit_fold`): a smooth curve
        # even with a few hundred churners, where PR-AUC moves in steps and peaks early by chance
        "metric": "binary_logloss",
        "verbosity": -1,
        "seed": config.seed,
        "deterministic": True,
        "num_threads": 2,
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 63),
        "max_depth": trial.suggest_int("max_depth", 2, config.max_depth),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "bagging_freq": 1,
        # categorical splits overfit easily (a noise attribute can look predictive): smooth them hard
        "min_data_per_group": 200,
        "cat_smooth": 50.0,
        "cat_l2": 20.0,
        "max_cat_threshold": 16,
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        # class imbalance: weight positives, searched between none and the full inverse frequency
        "scale_pos_weight": trial.suggest_float("scale_pos_weight", 1.0, max(1.0, pos_weight)),
    }


def _fit_fold(
    params: dict, x_tr, y_tr, x_va, y_va, fs: FeatureSet, config: TrainConfig, callbacks=()
) -> lgb.Booster:  # noqa: ANN001
    """Fit with early stopping on the validation log loss, positives weighted as in training.

    The weight makes the stopping loss the one being minimised: unweighted, a model trained with
    ``scale_pos_weight`` looks worse with every round that sharpens it, and stops after a few dozen.
    ``callbacks`` (the pruner) read the validation PR-AUC, computed only when they are given.
    """
    train_set = _dataset(x_tr, y_tr, fs)
    weight = np.where(np.asarray(y_va) == 1, float(params.get("scale_pos_weight", 1.0)), 1.0)
    valid_set = _dataset(x_va, y_va, fs, reference=train_set, weight=weight)
    return lgb.train(
        params, train_set, num_boost_round=config.max_rounds, valid_sets=[valid_set], valid_names=["valid"],
        feval=_average_precision if callbacks else None,
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False), *callbacks],
    )  # fmt: skip


def _choose_calibrator(oof: pd.DataFrame, methods: list[str]) -> Calibrator:
    """Pick the method with the lowest log loss on held-out folds, then fit it on all out-of-fold rows."""
    folds = oof["fold"].unique()
    scores = {}
    for method in methods:
        losses = []
        for f in folds:
            fit_part, held = oof[oof["fold"] != f], oof[oof["fold"] == f]
            if len(folds) == 1:  # one fold: fit and score on halves in time-independent row order
                half = len(oof) // 2
                fit_part, held = oof.iloc[:half], oof.iloc[half:]
            cal = Calibrator.fit(method, fit_part["raw"], fit_part["y"])
            losses.append(
                log_loss(held["y"], np.clip(cal.predict(held["raw"]), 1e-6, 1 - 1e-6), labels=[0, 1])
            )
        scores[method] = float(np.mean(losses))
    best = min(scores, key=scores.get)
    log.info("calibration: held-out log loss %s -> %s", {k: round(v, 4) for k, v in scores.items()}, best)
    return Calibrator.fit(best, oof["raw"], oof["y"])


def _recency_score(frame: pd.DataFrame, fs: FeatureSet) -> np.ndarray:
    """Baseline heuristic: days since the account's most recent event of any type (longer = riskier)."""
    cols = [column_name("days_since_last", slug(t)) for t in fs.event_types]
    days = frame[cols].to_numpy(float) if cols else np.zeros((len(frame), 1))
    score = np.nanmin(np.where(np.isnan(days), np.inf, days), axis=1)
    return np.where(np.isinf(score), 1e6, score)


def logistic_baseline(dev: pd.DataFrame, test: pd.DataFrame, fs: FeatureSet) -> np.ndarray:
    """The logistic-regression baseline's test scores: numbers standardised (missing -> development
    median), categories one-hot (levels with 20+ development rows; rarer ones pooled, so an id-like
    text column cannot memorise rows)."""
    numeric = [c for c in fs.columns if c not in fs.categorical_columns]
    medians = dev[numeric].median().fillna(0.0)

    def design(part: pd.DataFrame) -> pd.DataFrame:
        pieces = [part[numeric].astype(float).fillna(medians).clip(-1e9, 1e9)]
        for c in fs.categorical_columns:
            counts = dev[c].value_counts()
            levels = counts[counts >= 20].index
            known = part[c].where(part[c].isin(levels))  # other levels: all-zero, like a missing value
            pieces.append(pd.get_dummies(pd.Categorical(known, categories=levels), prefix=c, dtype=float))
            pieces[-1].index = part.index
        return pd.concat(pieces, axis=1)

    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    lr.fit(design(dev), dev["churned"].to_numpy(int))
    return lr.predict_proba(design(test))[:, 1]


def _baselines(dev: pd.DataFrame, test: pd.DataFrame, fs: FeatureSet, config: TrainConfig) -> dict:
    y_dev, y_test = dev["churned"].to_numpy(int), test["churned"].to_numpy(int)
    mrr = test["mrr"].to_numpy(float) if "mrr" in test else None
    p_lr = logistic_baseline(dev, test, fs)
    recency = _recency_score(test, fs)
    p_rec = (np.argsort(np.argsort(recency)) + 1) / (
        len(recency) + 1
    )  # rank-scaled: a score, not a probability
    return {
        "base_rate": churn_metrics(y_test, np.full(len(y_test), y_dev.mean()), mrr, config.capacity),
        "logistic_regression": churn_metrics(y_test, p_lr, mrr, config.capacity),
        "recency_heuristic": churn_metrics(y_test, p_rec, mrr, config.capacity),
    }


def _tuning_digest(folds, x: pd.DataFrame, y: np.ndarray, config: TrainConfig, pos_weight: float) -> str:  # noqa: ANN001
    """Fingerprint of what a study's scores depend on: the rows, their labels, the folds and the search."""
    h = hashlib.sha256(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes())
    h.update(np.asarray(y, np.int64).tobytes())
    for tr, va in folds:
        h.update(np.asarray(tr).tobytes() + b"|" + np.asarray(va).tobytes())
    search = config.model_dump(include={"max_depth", "max_rounds", "early_stopping_rounds"})
    h.update(repr((sorted(search.items()), round(pos_weight, 9))).encode())
    return h.hexdigest()[:16]


def tune_lightgbm(
    folds: list[tuple[np.ndarray, np.ndarray]],
    x: pd.DataFrame,
    y: np.ndarray,
    fs: FeatureSet,
    config: TrainConfig,
    storage: str | None,
    study_name: str,
    on_trial: Callable[[int, int], None] | None = None,
    pos_weight: float | None = None,
) -> optuna.Study:
    """Optuna search maximising mean PR-AUC over the folds (row masks or indices into ``x``).

    The first fold reports every boosting round to the median pruner; early stopping runs in every fit.
    ``pos_weight`` bounds the class-weight search (default: the inverse churn rate of ``y``); pass the
    development rows' so that no test label shapes the search.
    """
    if pos_weight is None:
        pos_weight = _inverse_churn_rate(y)

    def objective(trial: optuna.Trial) -> float:
        params = _params(trial, config, pos_weight)
        scores, rounds = [], []
        for i, (tr, va) in enumerate(folds):
            callbacks = (
                [LightGBMPruningCallback(trial, "average_precision", valid_name="valid")] if i == 0 else []
            )
            booster = _fit_fold(params, x.iloc[tr], y[tr], x.iloc[va], y[va], fs, config, callbacks)
            scores.append(average_precision_score(y[va], booster.predict(x.iloc[va].to_numpy())))
            rounds.append(booster.best_iteration or booster.current_iteration())
        trial.set_user_attr("rounds", int(np.mean(rounds)))
        return float(np.mean(scores))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=20),
    )  # fmt: skip
    # a continued study must see the same rows, folds and search space: else old scores are not comparable
    digest = _tuning_digest(folds, x, y, config, pos_weight)
    earlier = study.user_attrs.get("tuning_digest")
    if earlier is None:
        study.set_user_attr("tuning_digest", digest)
    elif earlier != digest:
        raise ValueError(
            f"tuning: study {study_name!r} was run on other data, folds or search settings; "
            "continue it only with the same table and config, or give a new study name"
        )
    done_before = len(study.trials)
    if done_before:  # a continued study: new random draws, not a replay of the first run's trials
        study.sampler = optuna.samplers.TPESampler(seed=config.seed + done_before)
    callbacks = [lambda s, t: on_trial(len(s.trials) - done_before, config.trials)] if on_trial else []
    study.optimize(objective, n_trials=config.trials, timeout=config.timeout_seconds, callbacks=callbacks)
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError("tuning: no trial completed (all pruned or failed); raise --trials or --timeout")
    return study


def retained_reference(rows: pd.DataFrame, fs: FeatureSet, description: str) -> FeatureReference:
    """How the rows' accounts that stayed look, per feature: what reasons compare an account with."""
    retained = rows[rows["churned"] == 0]
    numeric = [c for c in fs.columns if c not in fs.categorical_columns]
    return FeatureReference.fit(retained, numeric, list(fs.categorical_columns), description)


def train_model(
    table: pd.DataFrame,
    fs: FeatureSet,
    catalogue: list[FeatureInfo],
    horizon_days: int,
    config: TrainConfig,
    storage: str | None = None,
    study_name: str = "churn",
    on_trial: Callable[[int, int], None] | None = None,
    purge_days: int | None = None,
) -> TrainResult:
    """Tune, calibrate and evaluate out of time on a labelled feature table (one row per customer-date).

    ``purge_days``: how far past its date a row's label looks (default: the horizon; cancellation churn
    also waits out its grace period, `churnml.labels.label_margin`): the gap between training and
    validation or test dates.
    """
    if "churned" not in table:
        raise ValueError("training table: no 'churned' label column")
    table = table.sort_values(["observation_date", "customer_id"], kind="stable").reset_index(drop=True)
    splits, dev_dates, test_dates = time_splits(
        list(table["observation_date"].unique()),
        purge_days or horizon_days,
        config.backtest_folds,
        config.test_dates,
    )
    dev = table[table["observation_date"].isin(dev_dates)]
    test = table[table["observation_date"].isin(test_dates)]
    if dev["churned"].nunique() < 2 or test["churned"].nunique() < 2:
        raise ValueError("training table: development and test data each need churners and non-churners")
    categories = _categories(dev, fs)
    x_all = encode_features(table, fs, categories)
    y_all = table["churned"].to_numpy(int)
    pos_weight = _inverse_churn_rate(dev["churned"].to_numpy(int))  # test labels stay unseen
    fold_rows = [
        (table["observation_date"].isin(s.train_dates).to_numpy(), table["observation_date"].isin(s.valid_dates).to_numpy())
        for s in splits
    ]  # fmt: skip

    study = tune_lightgbm(fold_rows, x_all, y_all, fs, config, storage, study_name, on_trial, pos_weight)
    best = study.best_trial
    params = _params(optuna.trial.FixedTrial(best.params), config, pos_weight)

    # out-of-fold raw predictions with the best parameters -> calibrator
    oof_parts = []
    for i, (tr, va) in enumerate(fold_rows):
        booster = _fit_fold(params, x_all.iloc[tr], y_all[tr], x_all.iloc[va], y_all[va], fs, config)
        oof_parts.append(
            pd.DataFrame({"fold": i, "raw": booster.predict(x_all[va].to_numpy()), "y": y_all[va]})
        )
    oof = pd.concat(oof_parts, ignore_index=True)
    calibrator = _choose_calibrator(oof, config.calibration)

    # final booster on every development date, rounds from the backtest
    dev_mask = table["observation_date"].isin(dev_dates).to_numpy()
    rounds = max(10, int(best.user_attrs.get("rounds", 100)))
    final = lgb.train(params, _dataset(x_all[dev_mask], y_all[dev_mask], fs), num_boost_round=rounds)
    model = ChurnModel(
        booster=final, feature_set=fs, categories=categories, calibrator=calibrator, catalogue=catalogue,
        metadata={"horizon_days": horizon_days, "trained_through": str(max(dev_dates).date()),
                  "test_dates": [str(d.date()) for d in test_dates], "best_params": best.params, "rounds": rounds},
        # the latest labelled date's retained accounts, the nearest to the dates scored next: descriptive
        # (what reasons compare an account with), it changes no prediction and no test metric
        reference=retained_reference(table[table["observation_date"] == max(test_dates)], fs,
                                     f"accounts that stayed at {max(test_dates).date()}"),
    )  # fmt: skip
    test_mask = table["observation_date"].isin(test_dates).to_numpy()
    p_test = model.predict_proba(table[test_mask])
    recent = table[
        table["observation_date"].isin(sorted(table["observation_date"].unique())[-REFERENCE_DATES:])
    ]
    model.profile = fit_population_profile(  # what drift is measured against (`churnml monitor`)
        recent,
        fs,
        model.predict_proba(recent),
        recent["churned"].to_numpy(int),
        unseen=(
            recent["observation_date"] > max(dev_dates)
        ).to_numpy(),  # the purge gap's dates and the test's
        importance=final.feature_importance("gain"),
    )
    mrr = table.loc[test_mask, "mrr"].to_numpy(float) if "mrr" in table else None
    test_metrics = churn_metrics(y_all[test_mask], p_test, mrr, config.capacity)
    test_frame = table.loc[test_mask, ["customer_id", "observation_date", "churned"]].assign(
        probability=p_test
    )
    if mrr is not None:
        test_frame["mrr"] = mrr
    return TrainResult(
        model=model, params={**params, "num_boost_round": rounds}, test_metrics=test_metrics,
        baselines=_baselines(dev, test, fs, config), study=study, test_frame=test_frame, oof=oof,
        splits=splits, test_intervals=bootstrap_intervals(y_all[test_mask], p_test, seed=config.seed),
    )  # fmt: skip
