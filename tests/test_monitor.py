"""Monitoring: drift tests calibrated to the sample size, CBPE estimates with bands, realised performance,
the retrain trigger, the history kept per date, and the simulator's drift scenarios."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from churnml.features.profile import PREDICTION, PopulationProfile, fit_population_profile, js_distance, psi
from churnml.features.sets import FeatureSet
from churnml.monitor.drift import DriftSettings, drift_table, null_threshold
from churnml.monitor.estimate import Estimate, estimate_performance, realised_performance
from churnml.simulate import CONCEPT_DRIFT_WEIGHTS, DRIVERS, SimulationConfig, simulate
from tests.conftest import home_store, service_env


def test_psi_and_js_are_zero_for_the_same_shares_and_grow_with_a_shift() -> None:
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(ref, ref) == pytest.approx(0, abs=1e-9) and js_distance(ref, ref) == pytest.approx(0, abs=1e-6)
    small, large = np.array([0.3, 0.25, 0.25, 0.2]), np.array([0.7, 0.1, 0.1, 0.1])
    assert (
        0 < psi(ref, small) < psi(ref, large) and 0 < js_distance(ref, small) < js_distance(ref, large) <= 1
    )


def test_the_null_threshold_is_calibrated_to_the_sample_size() -> None:
    """Samples drawn from the reference itself pass the threshold about alpha of the time, whatever n."""
    rng = np.random.default_rng(0)
    ref = np.array([0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05])
    for n in (200, 20_000):
        threshold = null_threshold(ref, n, "psi", 0.05, 400, rng)
        samples = rng.multinomial(n, ref, size=4000) / n
        assert 0.03 <= (psi(ref, samples) > threshold).mean() <= 0.08, n
    # the same shift is noise for 200 rows and drift for 20,000
    shifted = np.array([0.04, 0.09, 0.19, 0.3, 0.21, 0.11, 0.06])
    assert psi(ref, shifted) < null_threshold(ref, 200, "psi", 0.05, 400, rng)
    assert psi(ref, shifted) > null_threshold(ref, 20_000, "psi", 0.05, 400, rng)


def _profile(rng: np.random.Generator) -> tuple[PopulationProfile, pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame({"logins": rng.poisson(20, 5000).astype(float), "tenure": rng.uniform(0, 400, 5000),
                          "plan": rng.choice(["a", "b"], 5000),
                          "observation_date": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(5000) % 5 * 31, unit="D")})  # fmt: skip
    frame.loc[rng.random(5000) < 0.1, "logins"] = np.nan
    p = rng.beta(1, 9, 5000)
    fs = FeatureSet((), table_numeric=("logins", "tenure"), table_categorical=("plan",))
    return fit_population_profile(frame, fs, p), frame, p


def test_a_column_that_keeps_moving_as_it_did_in_the_reference_is_reported_and_a_break_is_alarmed() -> None:
    """Accounts age: a column that drifted steadily over the reference dates keeps going, which the
    reference's own trend explains; the same distance in the other direction is drift."""
    rng = np.random.default_rng(3)
    dates = pd.date_range("2024-01-01", periods=6, freq="MS")
    frame = pd.concat([pd.DataFrame({"gap": rng.gamma(2.0, 10 + 2 * i, 3000), "observation_date": d})
                       for i, d in enumerate(dates)], ignore_index=True)  # fmt: skip
    fs = FeatureSet((), table_numeric=("gap",))
    profile = fit_population_profile(frame, fs, rng.beta(1, 9, len(frame)))
    later = pd.Timestamp("2024-12-01")  # six months on: the scale went from 10 to 22 and keeps growing
    ahead = pd.DataFrame({"gap": rng.gamma(2.0, 10 + 2 * 11, 3000)})
    p = rng.beta(1, 9, 3000)
    table = drift_table(profile, ahead, p, DriftSettings(), as_of=later).set_index("column")
    assert table.loc["gap", "drifted"] and not table.loc["gap", "alarm"]
    assert "trend" in table.loc["gap", "note"]
    without = drift_table(profile, ahead, p, DriftSettings()).set_index("column")  # no date: no trend
    assert without.loc["gap", "alarm"]
    back = pd.DataFrame({"gap": rng.gamma(2.0, 4, 3000)})  # as far, but against the trend
    broken = drift_table(profile, back, p, DriftSettings(), as_of=later).set_index("column")
    assert broken.loc["gap", "drifted"] and broken.loc["gap", "alarm"]
    restored = PopulationProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored.columns["gap"].by_date == profile.columns["gap"].by_date
    assert restored.reference_dates == profile.reference_dates


def test_a_moderate_shift_is_reported_and_only_a_major_one_raises_an_alarm() -> None:
    """PSI from 0.1 is reported as drift (moderate), from 0.25 it is an alarm (major: act on it)."""
    rng = np.random.default_rng(1)
    profile, frame, _ = _profile(rng)
    same = frame.sample(20_000, replace=True, random_state=2).reset_index(drop=True)
    p = rng.beta(1, 9, 20_000)
    moderate = drift_table(profile, same.assign(logins=same["logins"] + 2), p, DriftSettings()).set_index(
        "column"
    )
    assert 0.1 < moderate.loc["logins", "value"] < 0.25
    assert moderate.loc["logins", "drifted"] and not moderate.loc["logins", "alarm"]
    major = drift_table(profile, same.assign(logins=same["logins"] + 3), p, DriftSettings()).set_index(
        "column"
    )
    assert major.loc["logins", "value"] > 0.25 and major.loc["logins", "alarm"]


def test_a_rare_level_the_model_saw_is_not_new_when_it_turns_up_more_often() -> None:
    """The reference bins a category's 50 most common levels; the rarer ones it saw are remembered too,
    so only levels it never saw are reported as new (and the memory survives the model's files)."""
    from churnml.features.profile import ColumnProfile

    common = [f"L{i:02d}" for i in range(50) for _ in range(40)]  # 50 levels, 40 rows each
    rare = [f"R{i}" for i in range(10)]  # seen once each
    values = pd.Series(common + rare)
    column = ColumnProfile.fit(values, np.zeros(len(values)), categorical=True)
    assert len(column.levels) == 50 and set(column.known) == set(rare)
    later = pd.Series(["L00"] * 80 + ["R3"] * 10 + ["BRAND_NEW"] * 10)
    assert column.new_levels(later) == {"BRAND_NEW": pytest.approx(0.1)}
    profile, _, _ = _profile(np.random.default_rng(0))
    travelled = PopulationProfile.from_dict(replace(profile, columns={"c": column}).to_dict())
    assert travelled.columns["c"].known == column.known


def test_event_volume_is_drift_beyond_the_reference_dates_spread_and_a_quarter() -> None:
    """Per event type, the mean 30-day count per account now against the reference dates' means."""
    from churnml.monitor.drift import volume_table

    profile, _, _ = _profile(np.random.default_rng(0))
    profile = replace(
        profile, volume={"login": (10.0, 10.4, 9.8, 10.1, 9.9), "ticket": (2.0, 2.0, 2.1, 1.9, 2.0)}
    )
    settings = DriftSettings()
    columns = {"login": "login_count_30d", "ticket": "ticket_count_30d"}
    now = pd.DataFrame({"login_count_30d": [20.0, 21.0, 19.0], "ticket_count_30d": [2.0, 2.0, 2.1]})
    table = volume_table(profile, now, columns, settings).set_index("event_type")
    assert table.loc["login", "drifted"] and table.loc["login", "change"] == pytest.approx(0.996, abs=0.01)
    assert not table.loc["ticket", "drifted"]
    # within the reference's own spread, or below a quarter's change, is not drift
    calm = pd.DataFrame({"login_count_30d": [10.3], "ticket_count_30d": [2.3]})
    assert not volume_table(profile, calm, columns, settings)["drifted"].any()


def test_realised_performance_contradicts_its_estimate_beyond_the_band_chance_allows() -> None:
    """Several checks share one false-alarm rate: at a smaller alpha the band widens."""
    auc, rate = Estimate("roc_auc", 0.80, 0.78, 0.82), Estimate("churn_rate", 0.07, 0.065, 0.075)
    assert not auc.contradicted_by(0.85) and auc.contradicted_by(0.77)  # only falling short counts
    assert rate.contradicted_by(0.09) and rate.contradicted_by(0.05) and not rate.contradicted_by(0.072)
    assert auc.contradicted_by(0.775, alpha=0.05) and not auc.contradicted_by(0.775, alpha=0.005)


def test_drift_table_flags_a_real_shift_but_not_noise_nor_the_calendar() -> None:
    rng = np.random.default_rng(1)
    profile, frame, p = _profile(rng)
    same = frame.sample(3000, replace=True, random_state=2).reset_index(drop=True)
    quiet = drift_table(profile, same, rng.beta(1, 9, 3000), DriftSettings(), {"tenure"})
    assert not quiet["alarm"].any(), quiet
    moved = same.assign(logins=same["logins"] * 1.6, tenure=same["tenure"] + 200, plan=np.where(
        rng.random(3000) < 0.3, "c", same["plan"]))  # fmt: skip
    moved.loc[:600, "logins"] = np.nan  # and many more missing
    table = drift_table(profile, moved, rng.beta(3, 3, 3000), DriftSettings(), {"tenure"}).set_index("column")
    assert (
        table.loc["logins", "drifted"]
        and table.loc["logins", "missing_drifted"]
        and table.loc["logins", "alarm"]
    )
    assert table.loc["plan", "statistic"] == "js" and table.loc["plan", "drifted"]
    assert table.loc["plan", "new_levels"] == {"c": pytest.approx(0.3, abs=0.03)}
    assert table.loc[PREDICTION, "kind"] == "prediction" and table.loc[PREDICTION, "alarm"]
    assert table.loc["tenure", "drifted"] and not table.loc["tenure", "alarm"]  # reported, no alarm
    restored = PopulationProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored == profile


def test_estimates_cover_the_realised_figures_of_a_calibrated_model_and_not_of_a_drifted_concept() -> None:
    rng = np.random.default_rng(3)
    covered = []
    for k in range(30):
        p = rng.beta(0.7, 8, 6000)
        y = rng.random(6000) < p
        estimate = estimate_performance(p, 100, draws=200, seed=k)
        realised = realised_performance(y, p, 100)
        covered.append(estimate["roc_auc"].low <= realised["roc_auc"] <= estimate["roc_auc"].high)
        assert abs(estimate["roc_auc"].value - realised["roc_auc"]) < 0.05
    assert np.mean(covered) >= 0.85
    # the odds given the scores changed (here: reversed for half the accounts): realised falls below the band
    p = rng.beta(0.7, 8, 6000)
    y = rng.random(6000) < np.where(np.arange(6000) % 2 == 0, p, p[::-1])
    estimate = estimate_performance(p, 100)
    assert realised_performance(y, p, 100)["roc_auc"] < estimate["roc_auc"].low


def test_concept_drift_changes_the_weights_from_its_month_and_nothing_before(tmp_path: Path) -> None:
    base = simulate(SimulationConfig(customers=1200, months=8, seed=4), tmp_path / "base", workers=1)
    drift = simulate(SimulationConfig(customers=1200, months=8, seed=4, drift="concept", drift_month=5),
                     tmp_path / "concept", workers=1)  # fmt: skip
    assert base.churners != drift.churners
    cut = pd.Timestamp("2024-06-01")  # month 5: the same random draws, so the same history before it
    events = [pd.read_parquet(s.files["events"]) for s in (base, drift)]
    before = [e[e["timestamp"] < cut].reset_index(drop=True) for e in events]
    pd.testing.assert_frame_equal(before[0], before[1])
    truth = pd.read_parquet(drift.files["ground_truth"])
    late = truth[truth["churn_date"] >= cut]
    for k in DRIVERS:
        active = late[late[f"{k}_value"] > 0]
        if len(active):
            ratio = active[f"{k}_contribution"] / active[f"{k}_value"]
            assert np.allclose(ratio, CONCEPT_DRIFT_WEIGHTS[k]), k


def test_covariate_drift_puts_new_signups_on_a_new_plan(tmp_path: Path) -> None:
    summary = simulate(SimulationConfig(customers=1500, months=10, seed=2, drift="covariate", drift_month=6),
                       tmp_path, workers=1)  # fmt: skip
    customers = pd.read_parquet(summary.files["customers"])
    growth = customers[customers["plan"] == "growth"]
    assert len(growth) > 50 and (growth["signup_date"] >= pd.Timestamp("2024-07-01")).all()
    with pytest.raises(ValueError, match="drift must be"):
        SimulationConfig(drift="sideways")


# ------------------------------------------------------------------------------------------ end to end


def test_monitor_at_a_matured_date_sets_realised_beside_estimated(
    trained, sim_dir: Path, tmp_path: Path
) -> None:
    from churnml.config import Settings
    from churnml.data import load_dataset
    from churnml.engine import connect
    from churnml.monitor.run import MonitorConfig, monitor_at
    from churnml.monitor.store import read_history, save_report
    from churnml.spec import load_spec

    model = trained[2].model
    assert model.profile is not None and model.profile.rows > 100
    test_date = pd.Timestamp(model.metadata["test_dates"][-1])
    with connect(Settings(home=sim_dir, duckdb_memory_limit="1GB")) as con:
        spec = load_spec(sim_dir / "spec.yaml")
        tables = load_dataset(con, spec)
        as_of = test_date + pd.DateOffset(months=3)
        # an event type the model never saw, a month before the date; another only after it
        for kind, when in (
            ("webinar", as_of - pd.Timedelta(days=30)),
            ("hackathon", as_of + pd.Timedelta(days=5)),
        ):
            con.execute("INSERT INTO events BY NAME SELECT * REPLACE (? AS event_type, ? AS \"timestamp\") "
                        "FROM events LIMIT 3", [kind, when.to_pydatetime()])  # fmt: skip
        report = monitor_at(tables, spec, model, as_of, MonitorConfig(min_roc_auc=0.99))
    assert report.new_event_types == ["webinar"]  # "hackathon" had not happened at the date
    assert any("new event types the model has never seen: webinar" in r for r in report.reasons)
    assert report.rows > 500 and set(report.estimates) >= {
        "roc_auc",
        "pr_auc",
        "capture_top_k",
        "precision_high",
    }
    history = report.history[report.history["metric"] == "roc_auc"]
    assert list(history["as_of"]) == [test_date]  # matured by then: the test date's labels are in
    assert 0.5 < history["realised"].iloc[0] < 1 and history["low"].iloc[0] < history["high"].iloc[0]
    assert report.retrain and any("below the floor 0.99" in r for r in report.reasons)
    path = tmp_path / "monitoring.duckdb"
    save_report(path, report, "1", "run-a")
    save_report(path, report, "1", "run-b")  # the same model and date again: replaced, not doubled
    tables = read_history(path)
    assert list(tables["monitor_runs"]["mlflow_run_id"]) == ["run-b"]
    assert len(tables["estimates"]) == len(report.estimates) and len(tables["drift"]) == len(report.drift)


@pytest.mark.slow
def test_churnml_monitor_logs_to_mlflow_exits_3_when_retraining_is_due_and_retrains(
    champion_home: Path, sim_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import mlflow

    from churnml.cli import app

    home = tmp_path / "home"  # a copy of the registry: retraining here must not move the shared champion
    home.mkdir()
    shutil.copy(champion_home / "mlflow.db", home / "mlflow.db")
    for key, value in service_env(home).items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    spec = str(sim_dir / "spec.yaml")
    calm = tmp_path / "calm.yaml"
    calm.write_text(yaml.safe_dump({"trials": 2, "backtest_folds": 2, "monitor": {
        "min_roc_auc": 0.0, "max_drifted_features": 10_000, "min_psi": 100.0, "min_js": 1.0, "min_missing": 1.0,
        "min_volume_change": 100.0, "history_dates": 0}}))  # fmt: skip
    result = runner.invoke(app, ["monitor", "--spec", spec, "--config", str(calm)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output and "Estimated performance" in result.output
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"trials": 2, "backtest_folds": 2, "monitor": {"min_roc_auc": 0.99}}))
    result = runner.invoke(app, ["monitor", "--spec", spec, "--config", str(strict)], terminal_width=200)
    assert result.exit_code == 3, result.output
    assert "retraining recommended" in result.output and "below the floor 0.99" in result.output
    client = mlflow.tracking.MlflowClient(home_store(home))
    runs = client.search_runs([client.get_experiment_by_name("churnml-monitoring").experiment_id])
    assert len(runs) == 2 and {r.data.tags["model_version"] for r in runs} == {"1"}
    assert {r.data.tags["retrain"] for r in runs} == {"true", "false"}
    assert "estimated_roc_auc" in runs[0].data.metrics
    assert (home / "reports" / "monitoring.duckdb").is_file()
    result = runner.invoke(
        app, ["monitor", "--spec", spec, "--config", str(strict), "--retrain"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "registered churn v2 as challenger" in result.output and "champion v" in result.output
