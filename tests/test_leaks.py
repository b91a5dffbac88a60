"""The leak guard: columns that know the label are left out before tuning, named with their figures."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from churnml.features.sets import FeatureSet
from churnml.modeling import TrainConfig, train_snapshot
from churnml.modeling.leaks import LEAK_AUC, find_leaks, guard


def _table(n: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, FeatureSet]:
    """Two honest columns, a classifier's score of the label, a column filled in only for churners, a
    closing date (after the observation date for churners) and an id-like category."""
    rng = np.random.default_rng(seed)
    usage = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * usage - 1.5)))).astype(int)
    observed = pd.Timestamp("2024-06-01")
    frame = pd.DataFrame({
        "customer_id": [f"c{i}" for i in range(n)], "churned": y, "observation_date": observed,
        "usage": usage, "plan": rng.choice(["a", "b", "c"], n).astype(object),
        "nb_score": np.clip(y * 0.85 + rng.normal(0, 0.08, n), 0, 1),  # a classifier's output
        "exit_survey": np.where(y == 1, rng.integers(1, 5, n), np.nan),  # filled in on leaving
        "closed_on": np.where(y == 1, str((observed + pd.Timedelta(days=20)).date()),
                              np.where(rng.random(n) < 0.3, "2023-01-15", None)).astype(object),
        "ref": [f"r{i}" for i in range(n)],  # distinct per row: tells nothing
    })  # fmt: skip
    fs = FeatureSet((), (), table_numeric=("usage", "nb_score", "exit_survey"),
                    table_categorical=("plan", "closed_on", "ref"))  # fmt: skip
    return frame, fs


def test_each_rule_names_the_column_and_its_figure() -> None:
    frame, fs = _table()
    found = {(leak.column, leak.rule): leak.figure for leak in find_leaks(frame, fs)}
    assert found[("nb_score", "separates")] >= LEAK_AUC
    assert found[("exit_survey", "missingness")] == pytest.approx(1.0)
    assert found[("closed_on", "after_observation")] == pytest.approx(
        frame["churned"].sum() / frame["closed_on"].notna().sum()
    )
    assert not {c for c, _ in found} & {"usage", "plan", "ref"}  # honest columns, and an id-like one


def test_the_guard_leaves_leaks_out_with_a_warning_unless_kept(caplog) -> None:
    frame, fs = _table()
    with caplog.at_level(logging.WARNING, logger="churnml.modeling.leaks"):
        checked = guard(frame, fs)
    assert set(checked.left_out) == {"nb_score", "exit_survey", "closed_on"}
    assert checked.feature_set.columns == ["usage", "plan", "ref"]
    assert (
        "column 'nb_score' alone separates the label (single-column ROC-AUC 1.000 on the training rows)"
        in caplog.text
    )
    assert "left out (keep it with --keep-column nb_score)" in caplog.text
    kept = guard(frame, fs, keep=["exit_survey"])
    assert "exit_survey" in kept.feature_set.columns and "exit_survey" not in kept.left_out
    assert any(leak.kept and leak.column == "exit_survey" for leak in kept.leaks)
    with pytest.raises(ValueError, match=r"--keep-column nope: no such feature column"):
        guard(frame, fs, keep=["nope"])
    only_leaks = FeatureSet((), (), table_numeric=("nb_score",))
    with pytest.raises(ValueError, match="every feature column leaks the label"):
        guard(frame, only_leaks)


def test_a_table_with_label_derived_columns_trains_without_them() -> None:
    """The credit-card table's two classifier outputs reached CV PR-AUC 1.000 in every trial, unnoticed."""
    frame, fs = _table(n=3000, seed=1)
    frame = frame.drop(columns=["observation_date"])
    result = train_snapshot(frame, fs, TrainConfig(trials=3, seed=0))
    assert set(result.model.feature_names) == {"usage", "plan", "ref"}
    assert {(leak.column, leak.rule) for leak in result.leaks} == {  # no observation date here: no date rule
        ("nb_score", "separates"), ("exit_survey", "missingness"), ("closed_on", "separates"),
    }  # fmt: skip
    assert result.test_metrics["roc_auc"] < 0.95  # the honest signal only
    assert [i.name for i in result.model.catalogue] == result.model.feature_names
