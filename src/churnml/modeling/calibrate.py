"""Calibration: the method with the lowest held-out log loss, fitted on out-of-fold predictions."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from churnml.model import Calibrator

__all__ = ["choose_calibrator", "cross_fitted"]

log = logging.getLogger(__name__)


def choose_calibrator(oof: pd.DataFrame, methods: list[str]) -> Calibrator:
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


def cross_fitted(method: str, oof: pd.DataFrame) -> np.ndarray:
    """Out-of-fold probabilities, each fold calibrated by the others (no row scored by a calibrator that
    saw it): what cross-validation metrics are computed from."""
    calibrated = np.zeros(len(oof))
    fold = oof["fold"].to_numpy()
    raw, y = oof["raw"].to_numpy(), oof["y"].to_numpy()
    for f in np.unique(fold):
        held = fold == f
        calibrated[held] = Calibrator.fit(method, raw[~held], y[~held]).predict(raw[held])
    return calibrated
