"""Optuna over LightGBM at the speed of the hardware: binned once, stopped early, pruned between folds.

A trial costs what its fits cost and little more:

* each fold's rows are binned into LightGBM datasets **once** (`binned_folds`), and every trial trains
  on them (only the validation weights change with the trial's class weight);
* folds are fitted side by side, one per core (`FitPool`), each fit on its share of the cores: the
  rows of a churn table are too few for LightGBM's threads to pay (2 threads on 19,000 rows ran 1.3x
  faster than one at best, and 5-25x slower when another process kept a core busy, as OpenMP threads
  spin waiting for each other), while folds are independent;
* a fit stops when its validation loss (LightGBM's own, computed in C++) has not improved by
  ``min_improvement`` for ``early_stopping_rounds`` rounds: a perfect fit, whose loss creeps towards
  zero forever, stops as soon as its gains are negligible;
* PR-AUC, the objective, is computed once per fold (never per boosting round), and a trial whose mean
  so far is below the median of earlier trials after the same folds is pruned (`optuna.pruners.MedianPruner`
  with one step per fold);
* a trial that ranks the validation folds (all but) perfectly cannot be meaningfully beaten: the search
  stops there (a table with a leak, or a separable one, finishes in seconds).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import average_precision_score

from churnml.features.sets import FeatureSet
from churnml.modeling.config import TrainConfig
from churnml.modeling.studies import Heartbeat, StudyLock, optimize_to_budget, storage_for

__all__ = [
    "TuningRun",
    "FitPool",
    "Fold",
    "binned_folds",
    "fit_fold",
    "inverse_churn_rate",
    "lightgbm_dataset",
    "search_params",
    "tune_lightgbm",
]

# min_data_in_leaf is searched: features must not be pre-filtered by the first trial's value
DATASET_PARAMS = {"verbosity": -1, "feature_pre_filter": False}


def lightgbm_dataset(
    x: pd.DataFrame | np.ndarray, y: np.ndarray, fs: FeatureSet, reference: lgb.Dataset | None = None
) -> lgb.Dataset:
    """Rows in LightGBM's form, categoricals declared (a validation set shares its reference's bins)."""
    return lgb.Dataset(
        np.asarray(x, dtype=float), label=np.asarray(y, dtype=float), feature_name=list(fs.columns),
        categorical_feature=list(fs.categorical_columns), reference=reference, free_raw_data=False,
        params=dict(DATASET_PARAMS),
    )  # fmt: skip


@dataclass(frozen=True)
class TuningRun:
    """Where the Optuna study lives and who hears about each trial.

    A study with a trial budget (``budget`` when this run creates it, or one an earlier worker recorded)
    is shared: every worker runs trials until the study holds that many finished ones
    (`churnml.modeling.studies`), each sampling with its own ``seed``. Without one, a run adds
    ``config.trials`` trials to the study. ``source`` records how a worker rebuilds the tuned rows.
    """

    storage: str | None = None
    study_name: str = "churn"
    on_trial: Callable[[int, int], None] | None = None
    heartbeat: Heartbeat | None = None  # for a study on a database server
    budget: int | None = None
    seed: int | None = None  # this worker's sampler seed (default: the config's)
    source: dict | None = None


@dataclass
class Fold:
    """One fold's rows, binned once: every trial (and the calibration refit) trains on these datasets."""

    train: lgb.Dataset
    valid: lgb.Dataset
    x_valid: np.ndarray
    y_valid: np.ndarray
    valid_rows: np.ndarray  # positions in the tuned rows


def binned_folds(
    folds: Sequence[tuple[np.ndarray, np.ndarray]], x: pd.DataFrame, y: np.ndarray, fs: FeatureSet
) -> list[Fold]:
    """Each fold's training and validation rows (masks or positions into ``x``), binned once."""
    data, out = x.to_numpy(dtype=float), []
    for tr, va in folds:
        tr_rows, va_rows = _positions(tr, len(y)), _positions(va, len(y))
        train = lightgbm_dataset(data[tr_rows], y[tr_rows], fs)
        valid = lightgbm_dataset(data[va_rows], y[va_rows], fs, reference=train)
        train.construct()
        valid.construct()
        out.append(Fold(train, valid, data[va_rows], np.asarray(y[va_rows]), va_rows))
    return out


def _positions(rows: np.ndarray, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool and len(rows) == n else rows.astype(np.int64)


def inverse_churn_rate(y: np.ndarray) -> float:
    """Non-churners per churner: the class weight that balances the two."""
    return float((y == 0).sum() / max(1, (y == 1).sum()))


def search_params(trial: optuna.Trial, config: TrainConfig, pos_weight: float) -> dict[str, object]:
    """LightGBM parameters: fixed ones, and the trial's draws from the search space."""
    return {
        "objective": "binary",
        # early stopping watches the training loss on the validation rows (`fit_fold`): a smooth curve
        # even with a few hundred churners, where PR-AUC moves in steps and peaks early by chance
        "metric": "binary_logloss",
        "verbosity": -1,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,  # skips LightGBM's timing of both layouts at every fit
        "num_threads": cores(),  # a whole fit's share; `FitPool` gives folds fitted side by side fewer
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
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


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)


class FitPool:
    """Folds fitted side by side: as many at once as there are cores (at most one per fold), each fit
    with its share of the cores. LightGBM releases the GIL while it trains, so threads suffice."""

    def __init__(self, folds: int) -> None:
        self.workers = max(1, min(folds, cores()))
        self.threads = max(1, cores() // self.workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else None

    def __enter__(self) -> FitPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def waves(self, binned: list[Fold]) -> list[list[int]]:
        """Fold indices in groups fitted together: one fold per core, then the rest at once (a weak trial
        is pruned in between), unless the rest would leave cores idle (then every fold at once)."""
        n = len(binned)
        if n - self.workers < self.workers:
            return [list(range(n))]
        return [list(range(self.workers)), list(range(self.workers, n))]

    def fit(
        self, params: dict, folds: list[Fold], config: TrainConfig
    ) -> list[tuple[lgb.Booster, np.ndarray]]:
        """Each fold's booster and its raw predictions on the fold's validation rows (best iteration)."""
        params = {**params, "num_threads": self.threads}

        def one(fold: Fold) -> tuple[lgb.Booster, np.ndarray]:
            booster = fit_fold(params, fold, config)
            raw = booster.predict(
                fold.x_valid, num_iteration=booster.best_iteration or None, num_threads=self.threads
            )
            return booster, raw

        return list(self._pool.map(one, folds)) if self._pool is not None else [one(f) for f in folds]


def fit_fold(params: dict, fold: Fold, config: TrainConfig) -> lgb.Booster:
    """Fit with early stopping on the validation log loss, positives weighted as in training.

    The weight makes the stopping loss the one being minimised: unweighted, a model trained with
    ``scale_pos_weight`` looks worse with every round that sharpens it, and stops after a few dozen.
    """
    fold.valid.set_weight(np.where(fold.y_valid == 1, float(params.get("scale_pos_weight", 1.0)), 1.0))
    stop = lgb.early_stopping(
        config.early_stopping_rounds, first_metric_only=True, verbose=False, min_delta=config.min_improvement
    )
    return lgb.train(params, fold.train, num_boost_round=config.max_rounds, valid_sets=[fold.valid],
                     valid_names=["valid"], callbacks=[stop])  # fmt: skip


def _tuning_digest(
    folds: Sequence, x: pd.DataFrame, y: np.ndarray, config: TrainConfig, pos_weight: float
) -> str:
    """Fingerprint of what a study's scores depend on: the rows, their labels, the folds and the search."""
    h = hashlib.sha256(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes())
    h.update(np.asarray(y, np.int64).tobytes())
    for tr, va in folds:
        h.update(np.asarray(tr).tobytes() + b"|" + np.asarray(va).tobytes())
    search = config.model_dump(
        include={"max_depth", "max_rounds", "early_stopping_rounds", "min_improvement"}
    )
    h.update(repr((sorted(search.items()), round(pos_weight, 9))).encode())
    return h.hexdigest()[:16]


def _objective(
    binned: list[Fold], config: TrainConfig, pos_weight: float, pool: FitPool, seed: int | None = None
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        if seed is not None:
            trial.set_user_attr("worker_seed", seed)
        params = search_params(trial, config, pos_weight)
        scores, rounds = [], []
        for wave in pool.waves(binned):
            for i, (booster, raw) in zip(
                wave, pool.fit(params, [binned[i] for i in wave], config), strict=True
            ):
                scores.append(float(average_precision_score(binned[i].y_valid, raw)))
                rounds.append(booster.best_iteration or booster.current_iteration())
                trial.report(float(np.mean(scores)), i)  # step = folds so far: the same for every trial
            if len(scores) < len(binned) and trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("rounds", int(np.mean(rounds)))
        return float(np.mean(scores))

    return objective


def _stop_when_perfect(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """No trial can meaningfully beat a (nearly) perfect ranking of every fold: stop the search."""
    if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None and trial.value >= PERFECT:
        study.stop()


def _perfect_found(study: optuna.Study) -> bool:
    return any(t.value is not None and t.value >= PERFECT
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))  # fmt: skip


def _finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _open_study(run: TuningRun, config: TrainConfig, digest: str) -> optuna.Study:
    """The run's study, created if new; refused if it was tuned on other rows, folds or search settings.

    A study this run creates with a ``budget`` records it and the ``source`` for the workers that join."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = run.budget is not None or run.seed is not None
    study = optuna.create_study(
        study_name=run.study_name, storage=storage_for(run.storage, run.heartbeat), direction="maximize",
        load_if_exists=True, pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0),
        # workers side by side: a running trial counts as a bad result, so that they spread out
        sampler=optuna.samplers.TPESampler(seed=config.seed if run.seed is None else run.seed,
                                           constant_liar=shared),
    )  # fmt: skip
    # a continued study must see the same rows, folds and search space: else old scores are not comparable
    earlier = study.user_attrs.get("tuning_digest")
    if earlier is None:
        study.set_user_attr("tuning_digest", digest)
    elif earlier != digest:
        raise ValueError(
            f"tuning: study {run.study_name!r} was run on other data, folds or search settings; "
            "continue it only with the same table and config, or give a new study name"
        )
    if run.budget is not None and "trial_budget" not in study.user_attrs:
        study.set_user_attr("trial_budget", run.budget)
        if run.source is not None:
            study.set_user_attr("source", run.source)
    return study


# Mean PR-AUC from which nothing is left to gain: a few misranked rows in ten thousand, below what any
# validation set resolves
PERFECT = 0.9999


def tune_lightgbm(
    folds: list[tuple[np.ndarray, np.ndarray]],
    x: pd.DataFrame,
    y: np.ndarray,
    fs: FeatureSet,
    config: TrainConfig,
    run: TuningRun | None = None,
    pos_weight: float | None = None,
    binned: list[Fold] | None = None,
) -> optuna.Study:
    """Optuna search maximising mean PR-AUC over the folds (row masks or positions into ``x``).

    ``pos_weight`` bounds the class-weight search (default: the inverse churn rate of ``y``); pass the
    development rows' so that no test label shapes the search. ``binned``: the folds already binned
    (`binned_folds`), to reuse them afterwards.
    """
    run = run or TuningRun()
    if pos_weight is None:
        pos_weight = inverse_churn_rate(y)
    binned = binned if binned is not None else binned_folds(folds, x, y, fs)
    lock = StudyLock(run.storage, run.study_name)
    lock.acquire()  # workers starting together: one creates the study (and Optuna's tables), the rest join
    try:
        study = _open_study(run, config, _tuning_digest(folds, x, y, config, pos_weight))
    except BaseException:
        lock.close()
        raise
    lock.release()
    budget = study.user_attrs.get("trial_budget")
    if budget is None:
        lock.close()
    with FitPool(len(binned)) as pool:
        objective = _objective(binned, config, pos_weight, pool, run.seed)
        if budget is not None:  # a shared study: trials until the study holds its budget, by any worker
            callbacks = [lambda s, t: run.on_trial(_finished(s), budget)] if run.on_trial else None
            deadline = None if config.timeout_seconds is None else time.monotonic() + config.timeout_seconds
            optimize_to_budget(study, objective, int(budget), lock, deadline, done=_perfect_found,
                               callbacks=callbacks)  # fmt: skip
        else:
            done_before = len(study.trials)
            if done_before:  # a continued study: new random draws, not a replay of the first run's trials
                study.sampler = optuna.samplers.TPESampler(seed=config.seed + done_before)
            callbacks = [_stop_when_perfect]
            if run.on_trial:
                on_trial = run.on_trial
                callbacks.append(lambda s, t: on_trial(len(s.trials) - done_before, config.trials))
            study.optimize(objective, n_trials=config.trials, timeout=config.timeout_seconds,
                           callbacks=callbacks)  # fmt: skip
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError("tuning: no trial completed (all pruned or failed); raise --trials or --timeout")
    return study
