"""BG/NBD: the likelihood recovers known parameters, its predictions match simulated futures, and its
features are fitted on development rows only and computed alike in training and scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import hyp2f1

from churnml.data import load_dataset
from churnml.features.batch import training_table
from churnml.features.btyd import BgNbd, btyd_columns, fit_bgnbd, summary
from churnml.features.definitions import fitted_families
from churnml.features.engine import build_features
from churnml.modeling import TrainConfig, spec_task, train_model
from churnml.spec import parse_spec


def simulate(r: float, alpha: float, a: float, b: float, n: int, weeks: float, ahead: float, seed: int):  # noqa: ANN201
    """BG/NBD customers: (x, t_x, T) over a calibration period of up to ``weeks`` from their first
    transaction, and their transactions in the ``ahead`` weeks after it."""
    rng = np.random.default_rng(seed)
    rate, drop = rng.gamma(r, 1 / alpha, n), rng.beta(a, b, n)
    T = rng.uniform(weeks / 2, weeks, n)  # noqa: N806
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / rate[i])
            if t > T[i] + ahead:
                break
            if t <= T[i]:
                x[i], t_x[i] = x[i] + 1, t
            else:
                future[i] += 1
            if rng.random() < drop[i]:  # drops out after a repeat transaction
                break
    return x, t_x, T, future


@pytest.mark.parametrize(
    "truth",
    [(0.243, 4.414, 0.793, 2.426), (1.2, 3.0, 2.0, 5.0)],  # CDNOW's published fit, and a busier base
    ids=["cdnow-like", "frequent"],
)
def test_the_likelihood_recovers_the_parameters_it_was_simulated_from(truth: tuple[float, ...]) -> None:
    x, t_x, T, _ = simulate(*truth, n=20_000, weeks=39.0, ahead=0.0, seed=1)  # noqa: N806
    fitted = fit_bgnbd(x, t_x, T)
    got = np.array([fitted.r, fitted.alpha, fitted.a, fitted.b])
    # the rate's parameters are pinned down tightly, the dropout's (seen only through silences) less so
    np.testing.assert_allclose(got[:2], truth[:2], rtol=0.1)
    np.testing.assert_allclose(got[2:], truth[2:], rtol=0.25)
    # and it is the maximum: the truth is not more likely than what was found
    assert BgNbd(*truth).log_likelihood(x, t_x, T).sum() <= fitted.log_likelihood(x, t_x, T).sum() + 1e-6


def test_predictions_match_the_simulated_future() -> None:
    truth = BgNbd(0.243, 4.414, 0.793, 2.426)
    x, t_x, T, future = simulate(truth.r, truth.alpha, truth.a, truth.b, 20_000, 39.0, 26.0, seed=2)  # noqa: N806
    expected = truth.expected(26.0, x, t_x, T)
    assert expected.mean() == pytest.approx(future.mean(), rel=0.06)
    none = truth.p_none(26.0, x, t_x, T)
    assert none.mean() == pytest.approx((future == 0).mean(), abs=0.015)
    busy = x >= 3  # conditional on history: the frequent buyers' futures too
    assert expected[busy].mean() == pytest.approx(future[busy].mean(), rel=0.1)
    alive = truth.p_alive(x, t_x, T)
    assert (alive[x == 0] == 1).all() and ((alive > 0) & (alive <= 1)).all()
    # Euler's transform gives the textbook formula's value
    direct = alive * (truth.a + truth.b + x - 1) / (truth.a - 1) * (
        1 - ((truth.alpha + T) / (truth.alpha + T + 26)) ** (truth.r + x)
        * hyp2f1(truth.r + x, truth.b + x, truth.a + truth.b + x - 1, 26 / (truth.alpha + T + 26))
    )  # fmt: skip
    np.testing.assert_allclose(expected[:500], direct[:500], rtol=1e-8)


def test_the_features_come_from_a_rows_point_in_time_summary() -> None:
    """(x, t_x, T) from days with the event, since the first and since the last; every fitted family."""
    x, t_x, T = summary(
        np.array([1.0, 4.0, np.nan]), np.array([10.0, 70.0, np.nan]), np.array([10.0, 6.5, np.nan])
    )  # noqa: N806
    np.testing.assert_allclose(x[:2], [0.0, 3.0])
    np.testing.assert_allclose(T[:2] * 7, [10.0, 70.0])
    np.testing.assert_allclose(t_x[:2] * 7, [0.0, 63.0])  # an event 6.5 days back was on the 7th day back
    assert np.isnan(x[2])
    columns = btyd_columns(BgNbd(0.5, 2.0, 0.8, 2.5), 60, np.array([4.0]), np.array([70.0]), np.array([6.5]))
    assert set(columns) == {f.key for f in fitted_families()}


def _purchase_log(folder: Path, customers: int = 500, days: int = 420, seed: int = 3):  # noqa: ANN202
    """A date-only purchase log with BG/NBD behaviour, and a spec with inactivity churn."""
    rng = np.random.default_rng(seed)
    start, rows = pd.Timestamp("2023-01-01"), []
    for c in range(customers):
        rate, drop, t = rng.gamma(1.0, 1 / 6.0), rng.beta(1.0, 6.0), rng.uniform(0, 200)
        while t < days:
            rows.append(
                (f"c{c}", (start + pd.Timedelta(days=int(t))).date().isoformat(), round(rng.gamma(2, 20), 2))
            )
            if rng.random() < drop:
                break
            t += rng.exponential(1 / max(rate, 1e-3))
    pd.DataFrame(rows, columns=["customer", "day", "amount"]).to_csv(folder / "orders.csv", index=False)
    spec = {
        "name": "purchases", "source": {"kind": "files", "path": "."},
        "events": [{"file": "orders.csv", "event_type": "purchase", "duplicates": "keep",
                    "columns": {"customer_id": "customer", "timestamp": "day", "value": "amount"}}],
        "churn": {"definition": "inactivity", "activity_event_types": ["purchase"], "active_lookback_days": 90},
        "observation": {"start": "2023-07-01", "every": "1 month", "horizon_days": 60},
        "validation": {"as_of": "2030-01-01T00:00:00"},
    }  # fmt: skip
    return folder, parse_spec(spec, base_dir=folder)


def test_fitted_on_development_rows_only_and_computed_alike_when_scoring(tmp_path: Path, con) -> None:
    _, spec = _purchase_log(tmp_path)
    tables = load_dataset(con, spec)
    table, fs = training_table(tables, spec)
    assert "purchase_p_alive" not in fs.columns  # nothing fitted before training
    result = train_model(table, fs, spec_task(spec), TrainConfig(trials=2, backtest_folds=2))
    model = result.model
    ((event_type, params),) = model.feature_set.btyd
    assert event_type == "purchase" and model.feature_set.btyd_horizon_days == 60
    assert {"purchase_p_alive", "purchase_expected_days_ahead"} <= set(model.feature_names)
    # the parameters are those of the development rows, not of every row (the test date's included)
    dev = table[table["observation_date"] <= pd.Timestamp(model.metadata["trained_through"])]
    cols = ["purchase_active_days_total", "days_since_first_purchase", "days_since_last_purchase"]

    def fit(rows: pd.DataFrame) -> BgNbd:
        x, t_x, T = summary(*(rows[c].to_numpy(float) for c in cols))  # noqa: N806
        seen = ~np.isnan(x)
        return fit_bgnbd(x[seen], t_x[seen], T[seen])

    assert params == fit(dev) and params != fit(table)
    # scoring builds the same columns from the feature set the model carries
    test_rows = table[table["observation_date"] == table["observation_date"].max()]
    scored = build_features(tables, test_rows[["customer_id", "observation_date"]], model.feature_set)
    trained_values = model.encode(test_rows)
    for column in ("purchase_p_alive", "purchase_expected_days_ahead"):
        np.testing.assert_array_equal(scored[column].to_numpy(), trained_values[column].to_numpy())
    # the model's own churn probability is a baseline on the same test rows
    assert "bg_nbd" in result.baselines and result.baselines["bg_nbd"]["roc_auc"] > 0.6
    # the run is logged from the table the features step wrote (the fitted columns travel with the model)
    import mlflow

    from churnml.config import Settings
    from churnml.registry import check_tracking_server, log_training

    client = check_tracking_server(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        run_id, _ = log_training(
            result, table, TrainConfig(trials=2), Settings(home=tmp_path), "purchases", client
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert client.get_run(run_id).data.metrics["baseline_bg_nbd_roc_auc"] > 0.6
