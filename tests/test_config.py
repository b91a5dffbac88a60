"""Settings from the environment: defaults, overrides, and malformed values named by variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from churnml.config import Settings


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "CHURNML_RISK_HIGH",
        "CHURNML_RISK_MEDIUM",
        "CHURNML_MAX_INFLIGHT",
        "CHURNML_DUCKDB_THREADS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHURNML_HOME", str(tmp_path))
    s = Settings.from_env()
    assert (s.risk_high, s.risk_medium, s.max_inflight, s.home) == (0.5, 0.2, 64, tmp_path.resolve())
    monkeypatch.setenv("CHURNML_RISK_HIGH", "0.25")
    monkeypatch.setenv("CHURNML_RISK_MEDIUM", " 0.05 ")
    monkeypatch.setenv("CHURNML_MAX_INFLIGHT", "8")
    s = Settings.from_env()
    assert (s.risk_high, s.risk_medium, s.max_inflight) == (0.25, 0.05, 8)


def test_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CHURNML_TRUSTED_PROXIES",
        "CHURNML_AUTH_ATTEMPTS",
        "CHURNML_MAX_BODY_BYTES",
        "CHURNML_ACCESS_LOG",
    ):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.trusted_proxies, s.auth_attempts, s.max_body_bytes, s.access_log) == (
        (),
        5,
        64 * 1024 * 1024,
        False,
    )
    monkeypatch.setenv("CHURNML_TRUSTED_PROXIES", " 10.0.0.0/8 , ::1,192.0.2.7")
    monkeypatch.setenv("CHURNML_AUTH_ATTEMPTS", "3")
    monkeypatch.setenv("CHURNML_ACCESS_LOG", "1")
    s = Settings.from_env()
    assert (s.trusted_proxies, s.auth_attempts, s.access_log) == (("10.0.0.0/8", "::1", "192.0.2.7"), 3, True)
    assert "secret" not in repr(Settings(session_secret="secret", api_token="secret"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHURNML_RISK_HIGH": "high"}, "CHURNML_RISK_HIGH: expected a number, got 'high'"),
        ({"CHURNML_RISK_HIGH": "nan"}, "CHURNML_RISK_HIGH: expected a number"),
        ({"CHURNML_RISK_HIGH": "0.1", "CHURNML_RISK_MEDIUM": "0.2"}, "expected 0 < medium < high < 1"),
        ({"CHURNML_RISK_HIGH": "1.5"}, "expected 0 < medium < high < 1"),
        ({"CHURNML_MAX_INFLIGHT": "2.5"}, "CHURNML_MAX_INFLIGHT: expected an integer, got '2.5'"),
        ({"CHURNML_MAX_INFLIGHT": "0"}, "CHURNML_MAX_INFLIGHT: expected an integer >= 1"),
        ({"CHURNML_DUCKDB_THREADS": "-1"}, "CHURNML_DUCKDB_THREADS: expected an integer >= 1"),
        (
            {"CHURNML_TRUSTED_PROXIES": "10.0.0.0/8, proxy.local"},
            "CHURNML_TRUSTED_PROXIES: expected IP addresses",
        ),
        ({"CHURNML_COMPUTE_THREADS": "0"}, "CHURNML_COMPUTE_THREADS: expected an integer >= 1"),
        ({"CHURNML_BODY_TIMEOUT": "soon"}, "CHURNML_BODY_TIMEOUT: expected a number, got 'soon'"),
        ({"CHURNML_OPTUNA_STORAGE": "db-host/optuna"}, "CHURNML_OPTUNA_STORAGE: expected a database URL"),
        (
            {"CHURNML_OPTUNA_HEARTBEAT": "30", "CHURNML_OPTUNA_GRACE": "20"},
            "CHURNML_OPTUNA_GRACE: expected more seconds than CHURNML_OPTUNA_HEARTBEAT (30), got 20",
        ),
        ({"CHURNML_ENGINE": "hadoop"}, "CHURNML_ENGINE: expected one of duckdb, spark, got 'hadoop'"),
        ({"CHURNML_SPARK_PARTITIONS": "0"}, "CHURNML_SPARK_PARTITIONS: expected an integer >= 1"),
        ({"CHURNML_DASK_SCHEDULER": "scheduler:8786"}, "CHURNML_DASK_SCHEDULER: expected an address"),
        ({"CHURNML_DASK_LIGHTGBM_PORT": "80"}, "CHURNML_DASK_LIGHTGBM_PORT: expected an integer >= 1024"),
    ],
)
def test_malformed_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict, message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env()


def test_cli_reports_a_malformed_setting_without_a_traceback(tmp_path: Path) -> None:
    from tests.conftest import service_env

    done = subprocess.run(
        [str(Path(sys.executable).parent / "churnml"), "score", "--spec", str(tmp_path / "spec.yaml")],
        env=service_env(tmp_path, CHURNML_RISK_MEDIUM="0.9"), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "CHURNML_RISK_MEDIUM / CHURNML_RISK_HIGH: expected 0 < medium < high < 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_scaling_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The engines' settings: defaults, and the Optuna storage that tuning uses (its own SQLite file by
    default, the shared database when set)."""
    monkeypatch.setenv("CHURNML_HOME", str(tmp_path))
    defaults = Settings.from_env()
    assert (defaults.engine, defaults.spark_master, defaults.optuna_heartbeat, defaults.optuna_grace) == (
        "duckdb", "local[2]", 30, 90,
    )  # fmt: skip
    assert defaults.study_storage == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"
    monkeypatch.setenv("CHURNML_OPTUNA_STORAGE", "postgresql://u:p@db/optuna")
    monkeypatch.setenv("CHURNML_OPTUNA_HEARTBEAT", "5")
    monkeypatch.setenv("CHURNML_ENGINE", "spark")
    shared = Settings.from_env()
    assert shared.study_storage == "postgresql://u:p@db/optuna" and shared.optuna_grace == 15
    assert shared.engine == "spark" and "u:p" not in repr(shared)  # the password stays out of logs


def test_impact_settings_are_read_and_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHURNML_HOLDOUT_SHARE", "CHURNML_PLAY_COST", "CHURNML_IMPACT_MIN_EFFECT"):
        monkeypatch.delenv(name, raising=False)
    default = Settings.from_env()
    assert (default.holdout_share, default.play_cost, default.impact_min_effect) == (0.1, None, 0.05)
    monkeypatch.setenv("CHURNML_HOLDOUT_SHARE", "0")
    monkeypatch.setenv("CHURNML_PLAY_COST", "40")
    assert (Settings.from_env().holdout_share, Settings.from_env().play_cost) == (0.0, 40.0)
    for name, value in (("CHURNML_HOLDOUT_SHARE", "0.8"), ("CHURNML_HOLDOUT_SHARE", "ten"), ("CHURNML_PLAY_COST", "-5"),
                        ("CHURNML_IMPACT_MIN_EFFECT", "2")):  # fmt: skip
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name):
            Settings.from_env()
        monkeypatch.delenv(name)
