"""Ready-made feature tables (one row per customer, label attached): load, check, cross-validate.

For data without event history (the snapshot sets in ../shared/data) there is no time to split on, so
the model is tuned and evaluated with stratified K-fold cross-validation; the calibrator is fitted on
out-of-fold predictions and the reported metrics use cross-fitted calibration (each fold calibrated by
the other folds), so no row is scored by a calibrator that saw it.
"""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churnml.catalogue import FeatureInfo
from churnml.data import CSV_SUFFIXES, PARQUET_SUFFIXES
from churnml.evaluate import bootstrap_intervals, churn_metrics
from churnml.features import FeatureSet
from churnml.model import Calibrator, ChurnModel, encode_features
from churnml.train import (
    TrainConfig,
    TrainResult,
    _choose_calibrator,
    _dataset,
    _fit_fold,
    _params,
    tune_lightgbm,
)

__all__ = ["load_snapshot_table", "train_snapshot"]

_POSITIVE = {"1", "yes", "true", "y", "t", "churn", "churned"}
_NEGATIVE = {"0", "no", "false", "n", "f", "stay", "retained", "active"}
NUMERIC_SHARE = 0.95  # a text column whose non-blank values are at least this numeric is a number column


def load_snapshot_table(path: Path, target: str, id_column: str) -> tuple[pd.DataFrame, FeatureSet]:
    """Read a CSV/Parquet feature table; return (customer_id, churned, features...) and its feature set."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        raw = pd.read_parquet(path)
    elif suffix in CSV_SUFFIXES:
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",")
        except (UnicodeDecodeError, pd.errors.ParserError) as err:
            raise ValueError(f"table {path.name} cannot be read: {err}") from None
    else:
        raise ValueError(f"table {path.name}: expected a .csv or .parquet file")
    for name, col in (("--target", target), ("--id", id_column)):
        if col not in raw.columns:
            raise ValueError(
                f"table {path.name}: {name} column {col!r} not found; columns are {list(raw.columns)}"
            )
    ids = raw[id_column].astype(str).str.strip()
    dupes = ids[ids.duplicated()]
    if len(dupes):
        raise ValueError(
            f"table {path.name}.{id_column}: {len(dupes)} duplicate id(s), e.g. {dupes.iloc[0]!r}; expected one row per customer"
        )
    labels = raw[target].astype(str).str.strip().str.lower()
    unknown = sorted(set(labels) - _POSITIVE - _NEGATIVE)
    if unknown:
        raise ValueError(
            f"table {path.name}.{target}: values {unknown[:5]} are not a churn label; expected yes/no, 1/0 or true/false"
        )
    churned = labels.isin(_POSITIVE).astype("int8")
    if churned.nunique() < 2:
        raise ValueError(
            f"table {path.name}.{target}: only one class present; need churners and non-churners"
        )
    numeric, categorical, features = [], [], {}
    for col in raw.columns:
        if col in (target, id_column):
            continue
        values = raw[col]
        if pd.api.types.is_numeric_dtype(values):
            features[col] = values.astype(float)
            numeric.append(col)
            continue
        text = values.astype(str).str.strip().replace({"": None, "nan": None, "NaN": None})
        parsed = pd.to_numeric(text, errors="coerce")
        present = text.notna().sum()
        if present and parsed.notna().sum() >= NUMERIC_SHARE * present:
            features[col] = parsed.astype(float)  # blanks become missing, not zero
            numeric.append(col)
        else:
            features[col] = text.astype("object")
            categorical.append(col)
    frame = pd.DataFrame({"customer_id": ids, "churned": churned, **features})
    return frame, FeatureSet((), (), table_numeric=tuple(numeric), table_categorical=tuple(categorical))


def train_snapshot(
    frame: pd.DataFrame,
    fs: FeatureSet,
    catalogue: list[FeatureInfo],
    config: TrainConfig,
    folds: int = 5,
    storage: str | None = None,
    study_name: str = "churn-table",
) -> TrainResult:
    """Tune on stratified K-fold CV, calibrate on out-of-fold predictions, refit on all rows."""
    y = frame["churned"].to_numpy(int)
    categories = {c: sorted(str(v) for v in frame[c].dropna().unique()) for c in fs.categorical_columns}
    x = encode_features(frame, fs, categories)
    cv = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed).split(x, y))
    pos_weight = float((y == 0).sum() / max(1, (y == 1).sum()))

    study = tune_lightgbm(cv, x, y, fs, config, storage, study_name)
    best = study.best_trial
    params = _params(optuna.trial.FixedTrial(best.params), config, pos_weight)

    raw = np.zeros(len(y))
    fold_of = np.zeros(len(y), dtype=int)
    for i, (tr, va) in enumerate(cv):
        booster = _fit_fold(params, x.iloc[tr], y[tr], x.iloc[va], y[va], fs, config)
        raw[va] = booster.predict(x.iloc[va].to_numpy())
        fold_of[va] = i
    oof = pd.DataFrame({"fold": fold_of, "raw": raw, "y": y})
    calibrator = _choose_calibrator(oof, config.calibration)
    calibrated = np.zeros(len(y))
    for i in range(folds):  # cross-fitted: a fold's probabilities come from a calibrator fitted on the others
        held = fold_of == i
        calibrated[held] = Calibrator.fit(calibrator.method, raw[~held], y[~held]).predict(raw[held])
    rounds = max(10, int(best.user_attrs.get("rounds", 100)))
    final = lgb.train(params, _dataset(x, y, fs), num_boost_round=rounds)
    model = ChurnModel(final, fs, categories, calibrator, catalogue,
                       {"mode": "table", "cv_folds": folds, "best_params": best.params, "rounds": rounds,
                        "test_dates": []})  # fmt: skip
    baseline_x = x.drop(columns=list(fs.categorical_columns))
    baseline_x = pd.concat(
        [baseline_x, pd.get_dummies(frame[list(fs.categorical_columns)], dtype=float)], axis=1
    )
    p_lr = np.zeros(len(y))
    for tr, va in cv:
        med = baseline_x.iloc[tr].median()
        lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
            baseline_x.iloc[tr].fillna(med), y[tr]
        )
        p_lr[va] = lr.predict_proba(baseline_x.iloc[va].fillna(med))[:, 1]
    base_p = np.zeros(len(y))
    for tr, va in cv:
        base_p[va] = y[tr].mean()
    return TrainResult(
        model=model, params={**params, "num_boost_round": rounds},
        test_metrics=churn_metrics(y, calibrated, capacity=config.capacity),
        baselines={"base_rate": churn_metrics(y, base_p, capacity=config.capacity),
                   "logistic_regression": churn_metrics(y, p_lr, capacity=config.capacity)},
        study=study, test_frame=frame[["customer_id", "churned"]].assign(probability=calibrated), oof=oof,
        test_intervals=bootstrap_intervals(y, calibrated, seed=config.seed),
    )  # fmt: skip
