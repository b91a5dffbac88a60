"""How much a play lowers an account's churn probability, learnt from the logged treated and held-out
accounts: T- and X-learners on LightGBM, and a T-learner that knows each account's play.

- **T-learner** (``kind="t"``): one churn model on the held-out accounts, one on the treated; the uplift
  is their difference. Simple, but the held-out group is small (10% by default), so its model is the
  noisy half.
- **X-learner** (``"x"``, Künzel et al., 2019): each group's effect is imputed with the *other* group's
  model (treated: predicted churn if held out minus what happened; held out: what happened minus
  predicted churn if treated), a model is fitted to each, and the two are blended by the share treated.
- **Per-play learner** (``"play"``, the default when plays are known): the treatment is not one
  thing, each account gets the play for its top reason, and plays differ far more from one another
  than accounts with the same play do. Each play's effect is measured by the holdout itself, as a
  relative reduction of churn shrunk toward the mean play (:mod:`churnml.impact.play_effects`); an
  account's uplift is its play's relative reduction times its churn probability without a call. That
  probability comes from one churn model over every row there is: the held-out accounts, the treated
  ones with their play's measured effect as an offset (``log(1 - reduction)`` added to their score, so
  a saved account does not teach the model that its signs were harmless), and, when given, the
  accounts of the same campaigns that were not on the call list (``listed`` False): they never got a
  play and show how risk follows the features below the list's cut. Its rounds are chosen by early
  stopping on the latest dates when the rows' dates are given. A play never seen in learning (or no
  play) gets the mean play's reduction.

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
| per-play T-learner (play categorical; before) | 1.42 | 1.49 (1.36-1.71) | 0.49 (0.49-0.81) |
| the same, given the true relative reductions | 1.70 | 1.64 (1.42-1.77) | |
| per play: relative reduction x one churn model, treated rows offset, call list only | 1.50 | 1.52 (1.35-1.70) | |
| the same over every account of the learning months, 300 rounds | 1.50 | 1.53 (1.43-1.64) | |
| **the same, rounds by early stopping on the latest two months (chosen)** | **1.50** | **1.54 (1.42-1.65)** | **0.55** (0.55-0.82) |
| per play: share of the play's reason's SHAP (log-odds) removed, fitted per play | 1.47 | 1.26 (0.90-1.52) | 0.65 |

(The last five rows but the chosen one were measured by scripts on the benchmark's simulations.) The
variants within the per-play family differ by about as much as the seeds do; the chosen one is one
model instead of two, and over seeds 0-25 its ratio averages 1.52 (1.34-1.81, 16 of 26 at 1.5 or more).
Even given the simulator's own untreated churn probabilities, the learnt reductions reach 1.50-1.79
(seed 2 at 1.50), and given both the true probabilities and the true reductions 1.64-1.86: what is left
is mostly noise in the plays measured with 10% held out. A structural model (a play removes a share
of what its reason adds to the log-odds, the share fitted per play) found the simulator's shares
(onboarding 1.0 for 0.9, support 0.78 for 0.7) but ranked worse: SHAP values of one model are noisy
per account.

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

__all__ = ["KINDS", "UPLIFT_PARAMS", "StaleUpliftModel", "UpliftModel", "fit_uplift"]

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
MAX_ROUNDS, PATIENCE = 3000, 100  # early stopping of the per-play learner's churn model
VALIDATION_DATES = 6  # it validates on the latest sixth of the dates (at least one, of three or more)


class StaleUpliftModel(ValueError):
    """A learner saved by an earlier churnml that this one no longer scores with: fit it again."""


def _fit(
    x: pd.DataFrame, y: np.ndarray, objective: str, params: dict, rounds: int, offset: np.ndarray | None = None
) -> lgb.Booster:  # fmt: skip
    if len(x) == 0:
        raise ValueError(f"uplift: no rows to fit the {objective} model on (is one arm empty?)")
    data = lgb.Dataset(x, label=np.asarray(y, float), init_score=offset, free_raw_data=True)
    leaf = params.get("min_data_in_leaf", max(20, int(LEAF_SHARE * len(x))))
    return lgb.train(
        {**params, "objective": objective, "min_data_in_leaf": leaf}, data, num_boost_round=rounds
    )


def _early_stopped_rounds(
    x: pd.DataFrame, y: np.ndarray, offset: np.ndarray, dates: np.ndarray, params: dict
) -> int | None:
    """Rounds for the churn model, by early stopping on the latest dates (out of time, as it will be
    used); None when the rows span fewer than three dates."""
    distinct = np.unique(dates)
    if len(distinct) < 3:
        return None
    late = dates >= distinct[-max(1, len(distinct) // VALIDATION_DATES)]
    leaf = params.get("min_data_in_leaf", max(20, int(LEAF_SHARE * (~late).sum())))
    train = lgb.Dataset(x[~late], label=y[~late], init_score=offset[~late])
    valid = lgb.Dataset(x[late], label=y[late], init_score=offset[late], reference=train)
    booster = lgb.train({**params, "objective": "binary", "min_data_in_leaf": leaf}, train, MAX_ROUNDS,
                        valid_sets=[valid], callbacks=[lgb.early_stopping(PATIENCE, verbose=False)])  # fmt: skip
    return max(1, booster.best_iteration)


@dataclass
class UpliftModel:
    """A fitted learner: ``uplift(X, play)`` is the expected fall in churn probability if treated
    (``play``, each account's play, is used by the per-play learner and ignored by the others)."""

    kind: str  # one of KINDS
    columns: list[str]
    treated_share: float
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)
    play_effects: PlayEffects | None = None  # the per-play learner's
    base_score: float = 0.0  # the per-play learner's churn model starts here (log-odds), see _fit_per_play

    def _matrix(self, x: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.columns if c not in x.columns]
        if missing:
            raise ValueError(f"uplift: missing feature column(s) {missing[:5]}")
        return x[self.columns]

    def _booster(self, name: str) -> lgb.Booster:
        """One of the learner's models, or an error naming the learner that has no such model (the
        per-play learner has no per-arm churn models)."""
        if name not in self.boosters:
            raise ValueError(
                f"uplift: the {self.kind!r} learner has no {name!r} model (it has {sorted(self.boosters)})"
            )
        return self.boosters[name]

    def churn_if_control(self, x: pd.DataFrame) -> np.ndarray:
        return self._booster("control").predict(self._matrix(x))

    def churn_if_treated(self, x: pd.DataFrame) -> np.ndarray:
        return self._booster("treated").predict(self._matrix(x))

    def relative_reduction(self, play: np.ndarray | pd.Series | None, n: int) -> np.ndarray:
        """Each account's play's share of churn removed (the mean play's where unknown or missing)."""
        if self.play_effects is None:
            raise ValueError(f"uplift: the {self.kind!r} learner has no per-play effects")
        if play is not None and len(play) != n:
            raise ValueError(f"uplift: {n} feature rows but {len(play)} plays")
        return self.play_effects.relative_reduction([None] * n if play is None else play)

    def churn_if_untreated(self, x: pd.DataFrame) -> np.ndarray:
        """Per-play learner: churn without a call (the churn model that took each treated row's play as
        an offset)."""
        raw = self.boosters[UNTREATED].predict(self._matrix(x), raw_score=True)
        return 1.0 / (1.0 + np.exp(-(self.base_score + raw)))

    def uplift(self, x: pd.DataFrame, play: np.ndarray | pd.Series | None = None) -> np.ndarray:
        if self.kind == "play":
            return self.relative_reduction(play, len(x)) * self.churn_if_untreated(x)
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
                "play_effects": None if self.play_effects is None else self.play_effects.to_dict(),
                "base_score": self.base_score}  # fmt: skip
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
        if kind == "play" and meta.get("format", 1) < 3:
            raise StaleUpliftModel(f"uplift model {path}: a per-play learner of format {meta.get('format')} "
                                   f"(two churn models, one per arm); this churnml scores format {FORMAT}")  # fmt: skip
        if isinstance(columns, str):  # before format 2: one string, columns separated by \x1f
            columns = columns.split("\x1f")
        boosters = {}
        for name in BOOSTERS[kind]:
            if not (folder / f"{name}.txt").is_file():
                raise ValueError(f"uplift model {path}: its booster {folder / f'{name}.txt'} is missing")
            boosters[name] = lgb.Booster(model_file=str(folder / f"{name}.txt"))
        return cls(kind, list(columns), float(meta["treated_share"]), boosters, effects,
                   float(meta.get("base_score", 0.0)))  # fmt: skip


FORMAT = 3  # uplift.json: 2 added the format number, columns as a list and the plays' effects; 3 the
# per-play learner's one churn model (UNTREATED) in place of one per arm
UNTREATED = "untreated"
BOOSTERS = {"t": ["control", "treated"], "x": ["control", "treated", "effect_control", "effect_treated"],
            "play": [UNTREATED]}  # fmt: skip


def fit_uplift(
    x: pd.DataFrame, treated: np.ndarray, churned: np.ndarray, kind: str = "x",
    params: dict | None = None, rounds: int = ROUNDS, play: np.ndarray | pd.Series | None = None,
    listed: np.ndarray | None = None, dates: np.ndarray | None = None,
) -> UpliftModel:  # fmt: skip
    """Fit a T- (``kind="t"``), X- (``"x"``) or per-play learner (``"play"``, needs each row's
    ``play``: the play its account got, or would have got if held out) on logged rows of a randomised
    holdout. ``listed`` (default: every row) marks the call list's rows; the others, accounts of the
    same campaigns not on it (never treated), teach the per-play learner's churn model and are left
    out by the T- and X-learners. ``dates`` (each row's observation date), when given, let the
    per-play learner choose its rounds by early stopping on the latest of them."""
    if kind not in KINDS:
        raise ValueError(f"uplift kind: one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    treated, churned = np.asarray(treated, bool), np.asarray(churned, float)
    listed = np.ones(len(x), bool) if listed is None else np.asarray(listed, bool)
    sizes = {"treatment flags": len(treated), "outcomes": len(churned), "listed flags": len(listed),
             "dates": len(x) if dates is None else len(dates), "plays": len(x) if play is None else len(play)}  # fmt: skip
    if any(n != len(x) for n in sizes.values()):
        raise ValueError(
            f"uplift: {len(x)} feature rows but " + ", ".join(f"{n} {k}" for k, n in sizes.items())
        )
    if (treated & ~listed).any():
        raise ValueError("uplift: a row not on the call list (listed False) cannot be treated")
    if kind == "play" and play is None:
        raise ValueError("uplift kind 'play': needs each row's play")
    params = {**UPLIFT_PARAMS, **(params or {})}
    if kind == "play":
        return _fit_per_play(x, treated, churned, np.asarray(play, object), listed, dates, params, rounds)
    x, treated, churned = x[listed], treated[listed], churned[listed]
    model = UpliftModel(kind, list(x.columns), float(treated.mean()), {}, None)
    m = model._matrix(x)
    model.boosters["control"] = _fit(m[~treated], churned[~treated], "binary", params, rounds)
    model.boosters["treated"] = _fit(m[treated], churned[treated], "binary", params, rounds)
    if kind == "x":  # impute each group's effect with the other group's model, then learn it
        xt, xc = x[treated], x[~treated]
        effect_treated = model.churn_if_control(xt) - churned[treated]
        effect_control = churned[~treated] - model.churn_if_treated(xc)
        model.boosters["effect_treated"] = _fit(xt, effect_treated, "regression", params, rounds)
        model.boosters["effect_control"] = _fit(xc, effect_control, "regression", params, rounds)
    return model


def _fit_per_play(
    x: pd.DataFrame, treated: np.ndarray, churned: np.ndarray, play: np.ndarray, listed: np.ndarray,
    dates: np.ndarray | None, params: dict, rounds: int,
) -> UpliftModel:  # fmt: skip
    """Each play's effect from the call list's arms, then one churn model without a call over every row,
    the treated ones offset by their play's measured effect."""
    effects = estimate_play_effects(play[listed], treated[listed], churned[listed].astype(bool))
    model = UpliftModel("play", list(x.columns), float(treated[listed].mean()), {}, effects)
    # log(1 - reduction) = the shrunk log risk ratio: on the log-odds scale the same for rare churn.
    # LightGBM does not start from the mean when given offsets: start it from the untreated rows' churn
    rate = float(np.clip(churned[~treated].mean(), 1e-4, 1 - 1e-4))
    model.base_score = float(np.log(rate / (1 - rate)))
    left = np.clip(1.0 - model.relative_reduction(play, len(x)), 1e-3, None)
    offset = model.base_score + np.where(treated, np.log(left), 0.0)
    m = model._matrix(x)
    if dates is not None:
        rounds = _early_stopped_rounds(m, churned, offset, np.asarray(dates), params) or rounds
    model.boosters[UNTREATED] = _fit(m, churned, "binary", params, rounds, offset)
    return model
