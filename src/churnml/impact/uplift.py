"""How much a play lowers an account's churn probability, learnt from the logged treated and held-out
accounts: T- and X-learners on LightGBM.

- **T-learner**: one churn model on the held-out accounts, one on the treated; the uplift is their
  difference. Simple, but the held-out group is small (10% by default), so its model is the noisy half.
- **X-learner** (Künzel et al., 2019): each group's effect is imputed with the *other* group's model
  (treated: predicted churn if held out minus what happened; held out: what happened minus predicted
  churn if treated), a model is fitted to each, and the two are blended by the share treated. The
  large treated group's model does the imputing for the small group, which is why it suits holdouts.

Uplift is a *reduction* of churn probability: positive means the play helps. Both learners take a
plain numeric matrix (``churnml.model.encode_features`` makes one) and save as LightGBM text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

__all__ = ["UPLIFT_PARAMS", "UpliftModel", "fit_uplift"]

# Small trees, large leaves: a play's effect is a few points of churn probability, far below the noise
# of single outcomes, and on the simulator (benchmarks/bench_uplift.py) shallow, slow models ranked
# accounts by their true effect best (4 leaves and leaves of 1% of the rows beat 15 leaves of 40 rows)
UPLIFT_PARAMS = {
    "learning_rate": 0.03, "num_leaves": 4, "feature_fraction": 0.8, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "num_threads": 1, "seed": 0,
}  # fmt: skip
ROUNDS = 300
LEAF_SHARE = 0.01  # min_data_in_leaf: this share of the rows a model is fitted on (at least 20)


def _fit(x: pd.DataFrame, y: np.ndarray, objective: str, params: dict, rounds: int) -> lgb.Booster:
    if len(x) == 0:
        raise ValueError(f"uplift: no rows to fit the {objective} model on (is one arm empty?)")
    data = lgb.Dataset(x, label=np.asarray(y, float), free_raw_data=True)
    leaf = params.get("min_data_in_leaf", max(20, int(LEAF_SHARE * len(x))))
    return lgb.train(
        {**params, "objective": objective, "min_data_in_leaf": leaf}, data, num_boost_round=rounds
    )


@dataclass
class UpliftModel:
    """A fitted T- or X-learner: ``uplift(X)`` is the expected fall in churn probability if treated."""

    kind: str  # "t" or "x"
    columns: list[str]
    treated_share: float
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)

    def _matrix(self, x: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.columns if c not in x.columns]
        if missing:
            raise ValueError(f"uplift: missing feature column(s) {missing[:5]}")
        return x[self.columns]

    def churn_if_control(self, x: pd.DataFrame) -> np.ndarray:
        return self.boosters["control"].predict(self._matrix(x))

    def churn_if_treated(self, x: pd.DataFrame) -> np.ndarray:
        return self.boosters["treated"].predict(self._matrix(x))

    def uplift(self, x: pd.DataFrame) -> np.ndarray:
        if self.kind == "t":
            return self.churn_if_control(x) - self.churn_if_treated(x)
        m = self._matrix(x)
        tau_control, tau_treated = (
            self.boosters["effect_control"].predict(m),
            self.boosters["effect_treated"].predict(m),
        )
        return self.treated_share * tau_control + (1 - self.treated_share) * tau_treated

    def save(self, folder: Path) -> Path:
        """Each booster as LightGBM text, and what the learner is, in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, booster in self.boosters.items():
            booster.save_model(str(folder / f"{name}.txt"))
        meta = pd.Series(
            {"kind": self.kind, "treated_share": self.treated_share, "columns": "\x1f".join(self.columns)}
        )
        meta.to_json(folder / "uplift.json")
        return folder

    @classmethod
    def load(cls, folder: Path) -> UpliftModel:
        meta = pd.read_json(folder / "uplift.json", typ="series")
        names = ["control", "treated"] + (["effect_control", "effect_treated"] if meta["kind"] == "x" else [])
        boosters = {n: lgb.Booster(model_file=str(folder / f"{n}.txt")) for n in names}
        return cls(
            str(meta["kind"]), str(meta["columns"]).split("\x1f"), float(meta["treated_share"]), boosters
        )


def fit_uplift(
    x: pd.DataFrame, treated: np.ndarray, churned: np.ndarray, kind: str = "x",
    params: dict | None = None, rounds: int = ROUNDS,
) -> UpliftModel:  # fmt: skip
    """Fit a T- (``kind="t"``) or X-learner (``"x"``) on logged rows of a randomised holdout."""
    if kind not in ("t", "x"):
        raise ValueError(f"uplift kind: 't' or 'x', got {kind!r}")
    treated, churned = np.asarray(treated, bool), np.asarray(churned, float)
    if len(treated) != len(x) or len(churned) != len(x):
        raise ValueError(
            f"uplift: {len(x)} feature rows but {len(treated)} treatment flags and {len(churned)} outcomes"
        )
    params = {**UPLIFT_PARAMS, **(params or {})}
    xt, xc = x[treated], x[~treated]
    boosters = {"control": _fit(xc, churned[~treated], "binary", params, rounds),
                "treated": _fit(xt, churned[treated], "binary", params, rounds)}  # fmt: skip
    model = UpliftModel(kind, list(x.columns), float(treated.mean()), boosters)
    if kind == "x":  # impute each group's effect with the other group's model, then learn it
        effect_treated = model.churn_if_control(xt) - churned[treated]
        effect_control = churned[~treated] - model.churn_if_treated(xc)
        boosters["effect_treated"] = _fit(xt, effect_treated, "regression", params, rounds)
        boosters["effect_control"] = _fit(xc, effect_control, "regression", params, rounds)
    return model
