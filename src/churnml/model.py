"""The churn model as one unit: booster, calibrator, feature set, categorical levels, catalogue.

Saved as LightGBM's own text format plus one JSON file (no pickles), so the service can rebuild the
exact predictor from the files alone. ``contributions`` returns per-feature SHAP values in log-odds
(LightGBM ``pred_contrib``, identical to shap.TreeExplainer for trees and much cheaper).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from churnml.features.btyd import with_fitted_columns
from churnml.features.catalogue import FeatureInfo
from churnml.features.profile import PopulationProfile
from churnml.features.reference import FeatureReference
from churnml.features.sets import FEATURE_DEFINITION, FeatureSet, IncomputableDefinitions

__all__ = ["Calibrator", "ChurnModel", "encode_features"]

_EPS = 1e-6

log = logging.getLogger(__name__)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Calibrator:
    """Maps raw model probabilities to calibrated ones: isotonic (a step function) or sigmoid (Platt)."""

    method: str  # "isotonic" | "sigmoid" | "identity"
    params: dict[str, list[float] | float] = field(default_factory=dict)

    @classmethod
    def fit(cls, method: str, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        raw, y = np.asarray(raw, float), np.asarray(y, float)
        if method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
            return cls("isotonic", {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
        if method == "sigmoid":
            lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
            return cls("sigmoid", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})
        if method == "identity":
            return cls("identity", {})
        raise ValueError(f"calibration method must be isotonic, sigmoid or identity, got {method!r}")

    def predict(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, float)
        if self.method == "isotonic":
            return np.interp(raw, np.asarray(self.params["x"]), np.asarray(self.params["y"]))
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(float(self.params["a"]) * _logit(raw) + float(self.params["b"]))))
        return raw


def encode_features(
    features: pd.DataFrame, feature_set: FeatureSet, categories: dict[str, list[str]]
) -> pd.DataFrame:
    """Model input: numeric columns as float, categoricals as integer codes of the training levels.

    Unknown categories become NaN (LightGBM sends them down the missing-value branch) rather than
    a code the model never saw. The frame is plain float64, so it also makes a clean MLflow signature.
    """
    columns = list(feature_set.columns)
    if feature_set.btyd:  # fitted columns follow this model's own parameters (`churnml.features.btyd`)
        features = with_fitted_columns(features, feature_set.btyd, feature_set.btyd_horizon_days)
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise ValueError(f"features: missing column(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    out = np.empty((len(features), len(columns)), dtype=float)
    numeric = [i for i, c in enumerate(columns) if c not in categories]
    block = features[[columns[i] for i in numeric]]
    slow = [c for c, dtype in block.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if slow:  # text or all-missing columns: parse them one by one (numeric blocks convert in one go)
        block = block.assign(**{c: pd.to_numeric(block[c], errors="coerce") for c in slow})
    out[:, numeric] = block.to_numpy(dtype=float, na_value=np.nan)
    nan = float("nan")
    for i, col in enumerate(columns):
        if col in categories:
            codes = {level: float(k) for k, level in enumerate(categories[col])}
            out[:, i] = [nan if pd.isna(v) else codes.get(str(v), nan) for v in features[col].tolist()]
    return pd.DataFrame(out, columns=columns, index=features.index)


@dataclass
class ChurnModel:
    booster: lgb.Booster
    feature_set: FeatureSet
    categories: dict[str, list[str]]
    calibrator: Calibrator
    catalogue: list[FeatureInfo]
    metadata: dict[str, object] = field(default_factory=dict)
    # how accounts that stayed looked at training time, per feature: reasons are compared with it
    reference: FeatureReference | None = None
    # the whole population at training time, in fixed bins: drift is measured against it
    profile: PopulationProfile | None = None

    @property
    def feature_names(self) -> list[str]:
        return list(self.feature_set.columns)

    def encode(self, features: pd.DataFrame) -> pd.DataFrame:
        return encode_features(features, self.feature_set, self.categories)

    @property
    def horizon_days(self) -> int:
        return int(self.metadata.get("horizon_days") or 90)

    def predict_raw(self, features: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        """Uncalibrated booster probability; ``num_threads=0`` uses every core (batch scoring)."""
        return np.asarray(self.booster.predict(self.encode(features).to_numpy(), num_threads=num_threads))

    def predict_proba(self, features: pd.DataFrame, num_threads: int = 1) -> np.ndarray:
        """Calibrated churn probability within the horizon."""
        return self.calibrator.predict(self.predict_raw(features, num_threads))

    def contributions(self, features: pd.DataFrame, num_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(per-feature SHAP values in log-odds, base value per row), from the uncalibrated booster."""
        contrib = np.asarray(
            self.booster.predict(self.encode(features).to_numpy(), pred_contrib=True, num_threads=num_threads)
        )
        return contrib[:, :-1], contrib[:, -1]

    # ------------------------------------------------------------------------------------------ files

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / "booster.txt"))
        meta = {
            "format": 1,
            "feature_set": json.loads(self.feature_set.to_json()),
            "categories": self.categories,
            "calibrator": asdict(self.calibrator),
            "catalogue": [i.to_dict() for i in self.catalogue],
            "metadata": self.metadata,
            "reference": self.reference.to_dict() if self.reference else None,
            "profile": self.profile.to_dict() if self.profile else None,
        }
        (folder / "model.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        return folder

    def to_files(self) -> dict[str, bytes]:
        """The saved files as bytes: how the model travels to where it scores (Spark executors), in
        its own format, and is checked there as any load is (`from_files`)."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="churnml-model-") as folder:
            self.save(Path(folder))
            return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> ChurnModel:
        """The model whose saved files ``to_files`` gave, loaded and checked."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="churnml-model-") as folder:
            for name, data in files.items():
                (Path(folder) / Path(name).name).write_bytes(data)
            return cls.load(Path(folder))

    @classmethod
    def load(cls, folder: Path) -> ChurnModel:
        """The model saved in ``folder``, checked: files whole, definitions computable, columns consistent."""
        folder = Path(folder)
        for name in ("booster.txt", "model.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"churn model at {folder}: {name} is missing")
        try:
            meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
            booster = lgb.Booster(model_file=str(folder / "booster.txt"))
        except (ValueError, lgb.basic.LightGBMError) as err:
            raise ValueError(f"churn model at {folder} is corrupt: {err}") from None
        feature_set = _read_feature_set(folder, meta.get("feature_set"))
        if booster.num_feature() != len(feature_set.columns):
            raise ValueError(
                f"churn model at {folder} is inconsistent: booster has {booster.num_feature()} features, "
                f"feature set {len(feature_set.columns)}"
            )
        try:
            catalogue = [FeatureInfo.from_dict(i) for i in meta["catalogue"]]
            reference = FeatureReference.from_dict(meta["reference"]) if meta.get("reference") else None
            profile = PopulationProfile.from_dict(meta["profile"]) if meta.get("profile") else None
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"churn model at {folder}: unreadable catalogue or reference: {err}") from None
        if [i.name for i in catalogue] != feature_set.columns:
            raise ValueError(
                f"churn model at {folder} is inconsistent: its catalogue does not list its columns"
            )
        return cls(
            booster=booster,
            feature_set=feature_set,
            categories={k: list(v) for k, v in meta["categories"].items()},
            calibrator=Calibrator(**meta["calibrator"]),
            catalogue=catalogue,
            metadata=meta.get("metadata", {}),
            reference=reference,
            profile=profile,
        )


def _read_feature_set(folder: Path, saved: object) -> FeatureSet:
    """The saved feature set, refused when this churnml cannot compute its columns as they were meant."""
    definition = saved.get("definition", 1) if isinstance(saved, dict) else None
    if type(definition) is not int:
        raise ValueError(
            f"churn model at {folder}: feature set definition must be a number, got {definition!r}"
        )
    assert isinstance(saved, dict)
    snapshot = bool(saved.get("table_numeric") or saved.get("table_categorical"))
    if definition > FEATURE_DEFINITION and not snapshot:
        # first: a newer model's other differences (fields, columns) all come from the same cause, and
        # its inputs mean something this code does not compute (serving it would score wrong inputs)
        raise ValueError(
            f"churn model at {folder} was trained on feature definitions {definition}, newer than this "
            f"churnml's {FEATURE_DEFINITION}: upgrade churnml to use it"
        )
    try:
        feature_set = FeatureSet.from_json(json.dumps(saved))
    except IncomputableDefinitions as err:
        raise ValueError(f"churn model at {folder} was trained on {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"churn model at {folder}: unreadable feature set: {err}") from None
    changes_since = feature_set.definition_changes()
    if changes_since:
        log.warning(
            "churn model at %s was trained on feature definitions %s, and this churnml computes %s: %s. "
            "Retrain it so its inputs mean what it learnt.",
            folder, feature_set.definition, FEATURE_DEFINITION, "; ".join(changes_since),
        )  # fmt: skip
    return feature_set
