"""Ready-made feature tables (one row per customer, label attached): load, check, cross-validate.

For data without event history (the snapshot sets in ../shared/data) there is no time to split on.
A share of the customers, chosen by a stable hash of their id, is held out as the test set: the same
customers in every retraining on the same ids, so ``churnml promote`` compares two models on rows
neither was trained on. The rest is tuned with stratified K-fold cross-validation; the calibrator is
fitted on out-of-fold predictions and the cross-validation metrics use cross-fitted calibration (each
fold calibrated by the other folds), so no row is scored by a calibrator that saw it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from churnml.data import CSV_SUFFIXES, PARQUET_SUFFIXES
from churnml.evaluate import bootstrap_intervals, churn_metrics
from churnml.features.catalogue import build_catalogue
from churnml.features.profile import fit_population_profile
from churnml.features.sets import FeatureSet
from churnml.model import ChurnModel, encode_features
from churnml.modeling.baselines import baseline_metrics
from churnml.modeling.calibrate import choose_calibrator, cross_fitted
from churnml.modeling.config import TrainConfig
from churnml.modeling.leaks import Leak, guard
from churnml.modeling.splits import holdout_mask
from churnml.modeling.train import TrainResult, final_model, out_of_fold, retained_reference
from churnml.modeling.tuning import TuningRun, binned_folds, inverse_churn_rate, search_params, tune_lightgbm

if TYPE_CHECKING:  # dask is the optional 'distributed' extra
    from churnml.modeling.distributed import DaskFit

__all__ = [
    "SnapshotDevelopment",
    "load_snapshot_table",
    "snapshot_development",
    "train_snapshot",
    "tune_snapshot",
]

_POSITIVE = {"1", "yes", "true", "y", "t", "churn", "churned"}
_NEGATIVE = {"0", "no", "false", "n", "f", "stay", "retained", "active"}
log = logging.getLogger(__name__)

NUMERIC_SHARE = 0.95  # a text column whose non-blank values are at least this numeric is a number column


def load_snapshot_table(
    path: Path, target: str, id_column: str | None, positive: str | None = None
) -> tuple[pd.DataFrame, FeatureSet]:
    """Read a CSV/Parquet feature table; return (customer_id, churned, features...) and its feature set.

    Without an id column the row number (from 1) is the id: fine for one table, but the held-out test
    set then follows row order, so a reordered table holds out other customers. ``positive`` names the
    churn value of a two-valued label ("Attrited Customer"); without it the label must read as
    yes/no, 1/0 or true/false.
    """
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
        if col is not None and col not in raw.columns:
            raise ValueError(
                f"table {path.name}: {name} column {col!r} not found; columns are {list(raw.columns)}"
            )
    if id_column is None:
        ids = pd.Series([str(i) for i in range(1, len(raw) + 1)], index=raw.index)
    else:
        ids = _id_text(raw[id_column])
        blank = raw[id_column].isna().to_numpy() | ids.isin(["", "nan", "NaN", "None"]).to_numpy()
        if blank.any():
            raise ValueError(
                f"table {path.name}.{id_column}: {int(blank.sum())} row(s) without an id, e.g. row "
                f"{int(np.flatnonzero(blank)[0]) + 1}; expected one id per customer"
            )
    dupes = ids[ids.duplicated()]
    if len(dupes):
        raise ValueError(
            f"table {path.name}.{id_column}: {len(dupes)} duplicate id(s), e.g. {dupes.iloc[0]!r}; expected one row per customer"
        )
    churned = _churn_label(raw[target], f"table {path.name}.{target}", positive)
    if churned.nunique() < 2:
        raise ValueError(
            f"table {path.name}.{target}: only one class present; need churners and non-churners"
        )
    numeric, categorical, features = _typed_columns(
        raw.drop(columns=[c for c in (target, id_column) if c]), path.name
    )
    for col in numeric + categorical:
        if not _looks_like_id(features[col]):
            continue
        if id_column is None:
            raise ValueError(
                f"table {path.name}.{col}: one distinct value per row, like an id; as a feature it would "
                f"let the model memorise rows. Give --id {col} if it is the customer id, or drop it"
            )
        log.warning("table %s.%s: one distinct value per row, like an id; kept as a feature", path.name, col)
    frame = pd.DataFrame({"customer_id": ids, "churned": churned, **features})
    return frame, FeatureSet((), (), table_numeric=tuple(numeric), table_categorical=tuple(categorical))


def _typed_columns(raw: pd.DataFrame, name: str) -> tuple[list[str], list[str], dict[str, pd.Series]]:
    """(numeric columns, categorical columns, their values): text that is mostly numbers is a number
    column (blanks missing, not zero), infinite values are missing, anything else is a category."""
    numeric, categorical, features = [], [], {}
    for col in raw.columns:
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
    for col in numeric:
        infinite = np.isinf(features[col])
        if infinite.any():  # no value, like a blank: a model can cope, a scaler or a sum cannot
            log.warning("table %s.%s: %d infinite value(s) read as missing", name, col, int(infinite.sum()))
            features[col] = features[col].mask(infinite)
    return numeric, categorical, features


def _churn_label(values: pd.Series, where: str, positive: str | None) -> pd.Series:
    """1 for churners, 0 for the others: by the value ``positive`` names (any two-valued label), else by
    the usual words (yes/no, 1/0, true/false...); an error names the values found."""
    text = _id_text(values).where(values.notna(), "")  # 1.0 reads as 1, as --positive 1 does
    blank = (text == "").to_numpy()
    if blank.any():  # a customer whose outcome is unknown can be neither churner nor not
        raise ValueError(f"{where}: {int(blank.sum())} row(s) without a label, e.g. row "
                         f"{int(np.flatnonzero(blank)[0]) + 1}; fill them or leave those customers out")  # fmt: skip
    found = sorted(set(text))
    if positive is None:
        lowered = text.str.lower()
        unknown = sorted({v for v in found if v.lower() not in _POSITIVE | _NEGATIVE})
        if unknown:
            # name both values, never suggest one: the first in some order may be the customers who stayed
            hint = f"; name the churn value with --positive VALUE (one of {found})" if len(found) == 2 else ""
            raise ValueError(
                f"{where}: values {unknown[:5]} are not a churn label; expected yes/no, 1/0 or true/false{hint}"
            )
        return lowered.isin(_POSITIVE).astype("int8")
    if len(found) != 2:
        raise ValueError(
            f"{where}: --positive needs a label with two values, found {len(found)}: {found[:10]}"
        )
    match = [v for v in found if v == positive.strip()] or [
        v for v in found if v.lower() == positive.strip().lower()
    ]
    if len(match) != 1:
        raise ValueError(f"{where}: --positive {positive!r} is not one of its values {found}")
    return (text == match[0]).astype("int8")


def _id_text(values: pd.Series) -> pd.Series:
    """Ids as text, the same whether a file stored them as integers, whole floats or strings."""
    if pd.api.types.is_float_dtype(values):
        whole = (values.notna() & (values == values.round())).to_numpy()
        text = values.astype(str).to_numpy(dtype=object)
        text[whole] = values[whole].astype("int64").astype(str).to_numpy()
        return pd.Series(text, index=values.index, dtype=object).str.strip()
    return values.astype(str).str.strip()


def _looks_like_id(values: pd.Series) -> bool:
    """A column with a distinct value in every row that is text or whole numbers (a continuous
    measurement may also be distinct per row, but rarely only whole numbers)."""
    if len(values) < 20 or values.isna().any() or values.nunique() < len(values):
        return False
    return values.dtype == object or bool((values == values.round()).all())


@dataclass
class SnapshotDevelopment:
    """A ready-made table split for training: the held-out customers apart, the rest in CV folds."""

    frame: pd.DataFrame  # the development rows
    test_frame: pd.DataFrame
    fs: FeatureSet
    leaks: tuple[Leak, ...]
    categories: dict[str, list[str]]
    x: pd.DataFrame
    y: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    pos_weight: float


def snapshot_development(
    frame: pd.DataFrame,
    fs: FeatureSet,
    config: TrainConfig,
    folds: int = 5,
    keep_columns: tuple[str, ...] = (),
) -> SnapshotDevelopment:
    """Hold out a stable share of customers, drop leaking columns (found on the rest), encode, fold."""
    held_out = holdout_mask(frame["customer_id"], config.table_holdout)
    test_frame, frame = frame[held_out].reset_index(drop=True), frame[~held_out].reset_index(drop=True)
    for name, part in (("held-out test", test_frame), ("development", frame)):
        counts = part["churned"].value_counts()
        if counts.get(1, 0) < folds or counts.get(0, 0) < folds:
            raise ValueError(
                f"table: the {name} rows hold {counts.get(1, 0)} churner(s) and {counts.get(0, 0)} "
                f"non-churner(s); need at least {folds} of each (more rows, or another table_holdout)"
            )
    checked = guard(frame, fs, keep_columns, config.seed)
    fs = checked.feature_set
    y = frame["churned"].to_numpy(int)
    categories = {c: sorted(str(v) for v in frame[c].dropna().unique()) for c in fs.categorical_columns}
    x = encode_features(frame, fs, categories)
    cv = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed).split(x, y))
    return SnapshotDevelopment(
        frame, test_frame, fs, checked.leaks, categories, x, y, cv, inverse_churn_rate(y)
    )


def tune_snapshot(d: SnapshotDevelopment, config: TrainConfig, tuning: TuningRun) -> optuna.Study:
    """Only the tuning of `train_snapshot`: what a worker joining a shared study runs."""
    return tune_lightgbm(d.folds, d.x, d.y, d.fs, config, tuning, d.pos_weight)


def train_snapshot(
    frame: pd.DataFrame,
    fs: FeatureSet,
    config: TrainConfig,
    folds: int = 5,
    tuning: TuningRun | None = None,
    id_column: str | None = None,
    keep_columns: tuple[str, ...] = (),
    dask: DaskFit | None = None,
) -> TrainResult:
    """Hold out a stable share of customers; leave out leaking columns (found on the rest, bar
    ``keep_columns``); tune on stratified K-fold CV of the rest, calibrate on its out-of-fold
    predictions, refit on all of it, and evaluate once on the held-out customers."""
    d = snapshot_development(frame, fs, config, folds, keep_columns)
    frame, test_frame, fs = d.frame, d.test_frame, d.fs
    categories, x, y, pos_weight = d.categories, d.x, d.y, d.pos_weight
    binned = binned_folds(d.folds, x, y, fs)
    study = tune_lightgbm(d.folds, x, y, fs, config, tuning or TuningRun(study_name="churn-table"),
                          pos_weight, binned)  # fmt: skip
    oof = out_of_fold(
        search_params(optuna.trial.FixedTrial(study.best_trial.params), config, pos_weight), binned, config
    )
    oof = oof.sort_values("row", kind="stable").reset_index(drop=True)
    calibrator = choose_calibrator(oof, config.calibration)
    final, params = final_model(study, x, y, fs, config, pos_weight, dask)
    model = ChurnModel(final, fs, categories, calibrator, build_catalogue(fs),
                       {"mode": "table", "evaluation": "customers", "cv_folds": folds, "best_params": study.best_trial.params,
                        "rounds": params["num_boost_round"], "test_dates": [], "training_rows": len(y),
                        "held_out_rows": len(test_frame), "table_holdout": config.table_holdout, "id_column": id_column},
                       reference=retained_reference(frame, fs, "accounts that stayed in the training rows"))  # fmt: skip
    y_test = test_frame["churned"].to_numpy(int)
    p_test = model.predict_proba(test_frame)
    calibrated = cross_fitted(calibrator.method, oof)  # out of fold, in the development rows' order
    model.profile = fit_population_profile(
        frame, fs, calibrated, y, importance=final.feature_importance("gain")
    )
    return TrainResult(
        model=model, params=params, test_metrics=churn_metrics(y_test, p_test, capacity=config.capacity),
        baselines=baseline_metrics(frame, test_frame, fs, config.capacity),
        study=study, test_frame=test_frame[["customer_id", "churned"]].assign(probability=p_test), oof=oof,
        test_intervals=bootstrap_intervals(y_test, p_test, seed=config.seed),
        cv_metrics=churn_metrics(y, calibrated, capacity=config.capacity),
        evaluation="customers", leaks=d.leaks,
        evaluation_description=f"{len(test_frame):,} held-out customers ({config.table_holdout:.0%} "
        f"{'by id' if id_column else 'by row number'}); tuned by {folds}-fold cross-validation",
    )  # fmt: skip
