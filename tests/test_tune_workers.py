"""Tuning on many machines: `churnml tune-worker` processes sharing one Optuna study on a real PostgreSQL.

Four workers run a study with a budget of trials; one is killed in the middle of a trial. The budget
must be met exactly, by distinct trials, and the killed worker's trial must be failed (its heartbeat
stopped) and run again, with the same parameters, by a worker that lived.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from churnml.modeling.studies import StudyLock, normalise_storage_url
from tests.conftest import service_env

pytestmark = pytest.mark.slow

BUDGET = 16
WORKERS = 4


def churn_table(path: Path, rows: int = 2000, seed: int = 3) -> Path:
    """A table with a learnable churn signal (tuning must do real work, and differ between trials)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    p = 1 / (1 + np.exp(-(x[:, 0] - 0.7 * x[:, 1] + 0.5 * x[:, 2] * x[:, 3] - 1.5)))
    frame = pd.DataFrame(x, columns=["logins", "tickets", "seats", "usage", "noise"]).round(4)
    frame.insert(0, "customer_id", [f"c{i}" for i in range(rows)])
    frame["plan"] = rng.choice(["starter", "team", "business"], size=rows)
    frame["churned"] = (rng.random(rows) < p).astype(int)
    frame.to_csv(path, index=False)
    return path


def _worker(home: Path, url: str, table: Path, config: Path, n: int) -> subprocess.Popen:
    argv = [str(Path(sys.executable).parent / "churnml"), "tune-worker", "--study", "shared",
            "--storage", url, "--table", str(table), "--target", "churned", "--id", "customer_id",
            "--folds", "3", "--config", str(config), "--trials", str(BUDGET)]  # fmt: skip
    env = service_env(home, CHURNML_OPTUNA_HEARTBEAT="1", CHURNML_OPTUNA_GRACE="4")
    with (home / f"worker-{n}.log").open("w") as log:  # the child keeps its own handle
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_in_a_trial(victim: subprocess.Popen, study: optuna.Study, timeout: float = 120) -> int:
    """SIGKILL the worker while it runs a trial; the number of that trial. The worker is first stopped
    (SIGSTOP) and the trial seen still running, so the kill lands inside it, not between two trials."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the worker to kill exited first"
        mine = [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]  # fmt: skip
        if mine and mine[0].params:  # its parameters drawn: the retry must run the same ones
            os.kill(victim.pid, signal.SIGSTOP)
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if any(t.number == mine[0].number for t in running):
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(timeout=30)
                return mine[0].number
            os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("the worker ran no trial to kill in time")


@contextmanager
def study_at(url: str, name: str) -> Iterator[optuna.Study]:
    """The study, its database connections closed after."""
    storage = optuna.storages.RDBStorage(url)
    try:
        yield optuna.load_study(study_name=name, storage=storage)
    finally:
        storage.engine.dispose()


def _wait_for_study(postgres, database: str, name: str, log: Path, timeout: float = 120) -> None:  # noqa: ANN001
    """Until a worker has created the study (asked of PostgreSQL directly: opening an Optuna storage
    would create Optuna's tables, side by side with the workers creating them)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres dbname={database}",
                         autocommit=True) as con:  # fmt: skip
        while time.monotonic() < deadline:
            try:
                if con.execute("SELECT 1 FROM studies WHERE study_name = %s", (name,)).fetchone():
                    return
            except psycopg.errors.UndefinedTable:
                pass
            time.sleep(0.2)
    raise AssertionError(f"no worker created the study:\n{log.read_text()[-3000:]}")


def test_workers_share_a_study_and_retry_a_killed_workers_trial(postgres, tmp_path: Path) -> None:
    url = postgres.create_database("optuna_workers")
    table = churn_table(tmp_path / "table.csv")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"timeout_seconds": 300, "max_rounds": 150, "early_stopping_rounds": 10})
    )
    workers = [_worker(tmp_path, url, table, config, n) for n in range(WORKERS)]
    try:
        _wait_for_study(postgres, "optuna_workers", "shared", tmp_path / "worker-0.log")
        with study_at(url, "shared") as study:
            killed = _kill_in_a_trial(workers[0], study)
        for w in workers[1:]:
            assert w.wait(timeout=300) == 0, [
                (tmp_path / f"worker-{n}.log").read_text()[-3000:] for n in range(4)
            ]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    with study_at(url, "shared") as study:
        trials = study.get_trials()
    by_state = {s: [t for t in trials if t.state == s] for s in optuna.trial.TrialState}
    finished = by_state[optuna.trial.TrialState.COMPLETE] + by_state[optuna.trial.TrialState.PRUNED]
    assert len(finished) == BUDGET  # none lost, none run beyond the budget
    assert not by_state[optuna.trial.TrialState.RUNNING] and not by_state[optuna.trial.TrialState.WAITING]
    assert [t.number for t in by_state[optuna.trial.TrialState.FAIL]] == [killed]  # its heartbeat stopped
    retries = [t for t in finished if t.system_attrs.get("failed_trial") == killed]
    # the retry runs the parameters the killed trial had drawn (and draws any it had not reached)
    assert len(retries) == 1 and trials[killed].params.items() <= retries[0].params.items()
    assert not retries[0].user_attrs["worker"].endswith(f":{workers[0].pid}")  # run by a worker that lived
    fresh = [tuple(sorted(t.params.items())) for t in finished if "failed_trial" not in t.system_attrs]
    assert len(set(fresh)) == len(fresh)  # no trial duplicated
    seeds = {
        t.user_attrs["worker"]: t.user_attrs["worker_seed"] for t in trials if "worker_seed" in t.user_attrs
    }
    assert len(seeds) >= 3 and len(set(seeds.values())) == len(seeds)  # each worker its own seed
    summary = (tmp_path / "worker-1.log").read_text()
    assert "done: study 'shared'" in summary


def test_a_worker_joins_by_study_name_alone(postgres, tmp_path: Path) -> None:
    """The creator recorded the rows and the config: a worker elsewhere needs only --study and the storage;
    a study already at its budget runs no more trials."""
    url = postgres.create_database("optuna_join")
    table = churn_table(tmp_path / "table.csv", rows=600)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"timeout_seconds": 120, "max_rounds": 50, "early_stopping_rounds": 5}))
    cli = str(Path(sys.executable).parent / "churnml")
    env = service_env(tmp_path, CHURNML_OPTUNA_STORAGE=url.replace("+psycopg", ""))
    first = subprocess.run([cli, "tune-worker", "--study", "s", "--table", str(table), "--target", "churned",
                            "--id", "customer_id", "--folds", "3", "--config", str(config), "--trials", "3"],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    with study_at(url, "s") as study:
        assert study.user_attrs["trial_budget"] == 3 and study.user_attrs["source"]["table"] == str(table)
        study.set_user_attr("trial_budget", 5)  # raise the budget: the next worker runs the two missing
    second = subprocess.run([cli, "tune-worker", "--study", "s", "--seed", "7"], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    with study_at(url, "s") as study:
        trials = study.get_trials()
    assert len(trials) == 5 and [t.user_attrs.get("worker_seed") for t in trials[3:]] == [7, 7]
    missing = subprocess.run([cli, "tune-worker", "--study", "nope"], env=env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr


def test_storage_urls_are_checked_and_use_psycopg() -> None:
    assert normalise_storage_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    with pytest.raises(ValueError, match="--storage: expected a database URL"):
        normalise_storage_url("redis://h")
    StudyLock(None, "x").acquire()  # no server: no lock, no error
