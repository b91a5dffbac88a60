"""How much a play lowers an account's churn probability, learnt from the logged treated and held-out
accounts: T- and X-learners on LightGBM, and a T-learner that knows each account's play.

- **T-learner** (``kind="t"``): one churn model on the held-out accounts, one on the treated; the uplift
  is their difference. Simple, but the held-out group is small (10% by default), so its model is the
  noisy half.
- **X-learner** (``"x"``, Künzel et al., 2019): each group's effect is imputed with the *other* group's
  model (treated: predicted churn if held out minus what happened; held out: what happened minus
  predicted churn if treated), a model is fitted to each, and the two are blended by the share treated.
- **Per-play T-learner** (``"play"``, the default when plays are known): the treatment is not one
  thing, each account gets the play for its top reason, and plays differ far more from one another
  than accounts with the same play do. The T-learner's two churn models take the play as a
  (categorical) feature; each play's effect is measured by the holdout itself, as a relative reduction
  of churn shrunk toward the mean play (:mod:`churnml.impact.play_effects`); and an account's uplift is
  its play's relative reduction times its churn probability without a call. That probability pools
  both arms: the held-out model's prediction, and the treated model's divided by what the play left
  (``1 - reduction``), weighted by the arms' shares, so the large treated group informs it too. A play
  never seen in learning (or no play) gets the mean play's reduction.

Why the per-play learner: a play moves a month's churn by 1 to 4 points, far below the noise of single
outcomes, so learners that must find *who* responds from the outcomes alone barely beat chance
(rank correlation with the true effect 0.04 for X, 0.11 for T on the simulator with 10% held out).
What a call can do is mostly decided by which play it is (which the product knows at learning and at
scoring) and by how likely the account is to leave without it (which churn models learn well). On
``benchmarks/bench_uplift.py`` (20,000 accounts, 18 months, 10% held out; extra customers kept by the
top 20% by uplift over the top 20% by a learnt risk model; seeds 0-5):

| learner | seed 0 | seeds 0-5: mean (range) | rank correlation with the true effect, seed 0 |
| --- | --- | --- | --- |
| X-learner | 0.98 | 0.93 (0.82-0.99) | 0.04 |
| T-learner | 1.03 | 0.97 (0.85-1.04) | 0.11 |
| X-learner, play as a feature | 1.02 | | 0.10 |
| T-learner, play as a feature | 1.07 | | 0.17 |
| per play: difference of save rates, shrunk; ties by risk (no model) | 1.15 | | 0.18 |
| per play: relative reduction x the bench's risk model | 1.55 | 1.44 (1.34-1.55) | 0.62 |
| per play: relative reduction x T-learner without the play feature | 1.50 | 1.49 (1.32-1.67) | 0.54 |
| per play: ... x T-learner, play as an ordinal code | 1.46 | 1.54 (1.38-1.71) | 0.51 |
| **per-play T-learner (play categorical; chosen)** | **1.42** | **1.49 (1.36-1.71)** | **0.49** (0.49-0.81) |
| the same, given the true relative reductions | 1.70 | 1.64 (1.42-1.77) | |

The variants within the per-play family differ by less than the seeds do. The play is categorical
(an ordinal code would order plays by their names, which mean nothing), and the learner is
self-contained (blending in the churn model's probability moved the mean by 0.01). The issue's floor
(1.5) is met on 3 seeds of 6, not on seed 0: what is left is noise in the measured plays with 10% held
out (the last row), not the ranking by risk.

The difference of save rates (absolute points) cannot be shrunk usefully: plays whose accounts are
risky show large differences by chance, and empirical Bayes then pulls every play to the mean. The
relative scale separates plays cleanly, and multiplying by risk puts a play's points where churn is.
Adding the X- or T-learner's own within-play differences on top made the ranking worse (0.91, 0.74):
at 10% held out they are mostly noise.

Uplift is a *reduction* of churn probability: positive means the play helps. The learners take a plain
numeric matrix (``churnml.model.encode_features`` makes one), and the plays as names; they save as
LightGBM text and JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from churnml.impact.play_effects import PlayEffects, estimate_play_effects

__all__ = ["KINDS", "PLAY_COLUMN", "UPLIFT_PARAMS", "UpliftModel", "fit_uplift"]

# Small trees, large leaves: a play's effect is a few points of churn probability, far below the noise
# of single outcomes, and on the simulator (benchmarks/bench_uplift.py) shallow, slow models ranked
# accounts by their true effect best (4 leaves and leaves of 1% of the rows beat 15 leaves of 40 rows)
UPLIFT_PARAMS = {
    "learning_rate": 0.03, "num_leaves": 4, "feature_fraction": 0.8, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "num_threads": 1, "seed": 0,
}  # fmt: skip
ROUNDS = 300
LEAF_SHARE = 0.01  # min_data_in_leaf: this share of the rows a model is fitted on (at least 20)
KINDS = ("t", "x", "play")
PLAY_COLUMN = "uplift_play"  # the per-play learner's play, a categorical column beside the features


def _fit(x: pd.DataFrame, y: np.ndarray, objective: str, params: dict, rounds: int) -> lgb.Booster:
    if len(x) == 0:
        raise ValueError(f"uplift: no rows to fit the {objective} model on (is one arm empty?)")
    categorical = [PLAY_COLUMN] if PLAY_COLUMN in x.columns else "auto"
    data = lgb.Dataset(x, label=np.asarray(y, float), categorical_feature=categorical, free_raw_data=True)
    leaf = params.get("min_data_in_leaf", max(20, int(LEAF_SHARE * len(x))))
    return lgb.train(
        {**params, "objective": objective, "min_data_in_leaf": leaf}, data, num_boost_round=rounds
    )


def _play_codes(names: list[str], play: np.ndarray | pd.Series | None, n: int) -> np.ndarray:
    """Each row's play as its code among the learnt plays (sorted); unknown or missing: NaN."""
    if play is None:
        return np.full(n, np.nan)
    if len(play) != n:
        raise ValueError(f"uplift: {n} feature rows but {len(play)} plays")
    codes = {name: float(k) for k, name in enumerate(names)}
    return np.array([codes.get(p, np.nan) if isinstance(p, str) else np.nan for p in play], float)


@dataclass
class UpliftModel:
    """A fitted learner: ``uplift(X, play)`` is the expected fall in churn probability if treated
    (``play``, each account's play, is used by the per-play learner and ignored by the others)."""

    kind: str  # one of KINDS
    columns: list[str]
    treated_share: float
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)
    play_effects: PlayEffects | None = None  # the per-play learner's

    def _matrix(self, x: pd.DataFrame, play: np.ndarray | pd.Series | None = None) -> pd.DataFrame:
        missing = [c for c in self.columns if c not in x.columns]
        if missing:
            raise ValueError(f"uplift: missing feature column(s) {missing[:5]}")
        if self.play_effects is None:
            return x[self.columns]
        return x[self.columns].assign(
            **{PLAY_COLUMN: _play_codes(sorted(self.play_effects.plays), play, len(x))}
        )

    def churn_if_control(self, x: pd.DataFrame, play: np.ndarray | pd.Series | None = None) -> np.ndarray:
        return self.boosters["control"].predict(self._matrix(x, play))

    def churn_if_treated(self, x: pd.DataFrame, play: np.ndarray | pd.Series | None = None) -> np.ndarray:
        return self.boosters["treated"].predict(self._matrix(x, play))

    def relative_reduction(self, play: np.ndarray | pd.Series | None, n: int) -> np.ndarray:
        """Each account's play's share of churn removed (the mean play's where unknown or missing)."""
        if self.play_effects is None:
            raise ValueError(f"uplift: the {self.kind!r} learner has no per-play effects")
        return self.play_effects.relative_reduction([None] * n if play is None else play)

    def churn_if_untreated(self, x: pd.DataFrame, play: np.ndarray | pd.Series | None = None) -> np.ndarray:
        """Per-play learner: churn without a call, from both arms' models (the treated one's prediction
        divided by what the play leaves), weighted by the arms' shares."""
        reduction = self.relative_reduction(play, len(x))
        left = np.clip(1.0 - reduction, 1e-3, None)  # a play measured to remove (nearly) all churn
        pooled = (1 - self.treated_share) * self.churn_if_control(x, play) + self.treated_share * (
            self.churn_if_treated(x, play) / left
        )
        return np.clip(pooled, 0.0, 1.0)

    def uplift(self, x: pd.DataFrame, play: np.ndarray | pd.Series | None = None) -> np.ndarray:
        if self.kind == "play":
            return self.relative_reduction(play, len(x)) * self.churn_if_untreated(x, play)
        if self.kind == "t":
            return self.churn_if_control(x) - self.churn_if_treated(x)
        m = self._matrix(x)
        tau_control, tau_treated = (
            self.boosters["effect_control"].predict(m),
            self.boosters["effect_treated"].predict(m),
        )
        return self.treated_share * tau_control + (1 - self.treated_share) * tau_treated

    def save(self, folder: Path) -> Path:
        """Each booster as LightGBM text, and what the learner is (with its plays' effects) as JSON."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, booster in self.boosters.items():
            booster.save_model(str(folder / f"{name}.txt"))
        meta = {"format": FORMAT, "kind": self.kind, "treated_share": self.treated_share, "columns": self.columns,
                "play_effects": None if self.play_effects is None else self.play_effects.to_dict()}  # fmt: skip
        (folder / "uplift.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> UpliftModel:
        """A saved learner; those saved before the per-play learner (no format number) load too."""
        path = folder / "uplift.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            kind, columns = str(meta["kind"]), meta["columns"]
            effects = meta.get("play_effects")
            effects = None if effects is None else PlayEffects.from_dict(effects)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"uplift model {path}: cannot read it ({type(err).__name__}: {err})") from None
        if kind not in KINDS or (kind == "play") != (effects is not None):
            raise ValueError(f"uplift model {path}: unknown kind {kind!r} (or plays' effects missing)")
        if isinstance(columns, str):  # before format 2: one string, columns separated by \x1f
            columns = columns.split("\x1f")
        boosters = {}
        for name in ["control", "treated"] + (["effect_control", "effect_treated"] if kind == "x" else []):
            if not (folder / f"{name}.txt").is_file():
                raise ValueError(f"uplift model {path}: its booster {folder / f'{name}.txt'} is missing")
            boosters[name] = lgb.Booster(model_file=str(folder / f"{name}.txt"))
        return cls(kind, list(columns), float(meta["treated_share"]), boosters, effects)


FORMAT = 2  # uplift.json: 2 added the format number, columns as a list and the plays' effects


def fit_uplift(
    x: pd.DataFrame, treated: np.ndarray, churned: np.ndarray, kind: str = "x",
    params: dict | None = None, rounds: int = ROUNDS, play: np.ndarray | pd.Series | None = None,
) -> UpliftModel:  # fmt: skip
    """Fit a T- (``kind="t"``), X- (``"x"``) or per-play T-learner (``"play"``, needs each row's
    ``play``: the play its account got, or would have got if held out) on logged rows of a randomised
    holdout."""
    if kind not in KINDS:
        raise ValueError(f"uplift kind: one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    treated, churned = np.asarray(treated, bool), np.asarray(churned, float)
    if len(treated) != len(x) or len(churned) != len(x):
        raise ValueError(
            f"uplift: {len(x)} feature rows but {len(treated)} treatment flags and {len(churned)} outcomes"
        )
    if kind == "play" and (play is None or PLAY_COLUMN in x.columns):
        raise ValueError(f"uplift kind 'play': needs each row's play (and no feature named {PLAY_COLUMN!r})")
    params = {**UPLIFT_PARAMS, **(params or {})}
    effects = None if kind != "play" else estimate_play_effects(play, treated, churned.astype(bool))
    model = UpliftModel(kind, list(x.columns), float(treated.mean()), {}, effects)
    m = model._matrix(x, play)
    model.boosters["control"] = _fit(m[~treated], churned[~treated], "binary", params, rounds)
    model.boosters["treated"] = _fit(m[treated], churned[treated], "binary", params, rounds)
    if kind == "x":  # impute each group's effect with the other group's model, then learn it
        xt, xc = x[treated], x[~treated]
        effect_treated = model.churn_if_control(xt) - churned[treated]
        effect_control = churned[~treated] - model.churn_if_treated(xc)
        model.boosters["effect_treated"] = _fit(xt, effect_treated, "regression", params, rounds)
        model.boosters["effect_control"] = _fit(xc, effect_control, "regression", params, rounds)
    return model
