"""Optuna studies shared by many machines: storage on PostgreSQL, a trial budget, heartbeats.

One study, many workers (`churnml tune-worker --study NAME`, and `churnml train` itself): each worker
samples with its own seed and runs trials until the study holds ``budget`` finished ones. Three things
keep the count exact when workers come, go and die:

* a worker claims a trial under a lock on the study (a PostgreSQL advisory lock, held from the count
  to the moment the trial exists), so two workers never both take the last slot;
* every running trial beats a heartbeat (Optuna's ``RDBStorage``); a trial whose worker died stops
  beating, is failed after the grace period by the next worker that looks, and re-queued with the same
  parameters (``RetryHeartbeatStaleTrialCallback``): a killed worker's trial is neither lost nor run twice;
* a worker leaves only when the budget is finished, not merely claimed: while others still run the last
  trials it waits, so that it can fail and retry a trial whose worker dies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

__all__ = [
    "FINISHED",
    "StudyLock",
    "Heartbeat",
    "optimize_to_budget",
    "storage_for",
    "normalise_storage_url",
    "worker_name",
]

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what the budget counts
_OPEN = (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Heartbeat:
    """How often a running trial reports that its worker lives, and how long silence means death."""

    interval: int = 30  # seconds
    grace: int = 90  # seconds without a beat before the trial is failed and retried
    max_retry: int = 3  # a trial that kills its worker every time is not retried forever


def normalise_storage_url(url: str, where: str = "--storage") -> str:
    """An SQLAlchemy URL Optuna can open: ``postgresql://`` goes through psycopg 3, the driver we pin."""
    url = url.strip()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if scheme.split("+")[0] not in ("postgresql", "sqlite", "mysql"):
        raise ValueError(
            f"{where}: expected a database URL such as postgresql://user:password@host/db or "
            f"sqlite:///optuna.db, got {url[:40]!r}"
        )
    return url


def storage_for(url: str | None, heartbeat: Heartbeat | None) -> optuna.storages.BaseStorage | None:
    """The study's storage; on a server database with heartbeats and retries of dead workers' trials.

    SQLite is one machine's file: it keeps Optuna's plain storage (a heartbeat thread writing beside
    the trial's own writes would only meet SQLite's lock)."""
    if url is None:
        return None
    url = normalise_storage_url(url)
    if url.startswith("sqlite") or heartbeat is None:
        return optuna.storages.RDBStorage(url)
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=heartbeat.interval,
            grace_period=heartbeat.grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(heartbeat.max_retry),
        )  # fmt: skip


def worker_name() -> str:
    """host:pid, recorded on each trial a worker runs (which machine to look at when one fails)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StudyLock:
    """A lock on one study shared by every worker: a PostgreSQL advisory lock (released by the server
    when a worker dies); on SQLite, one machine's storage, none."""

    def __init__(self, storage_url: str | None, study_name: str) -> None:
        self._conninfo = None
        if storage_url and storage_url.startswith("postgresql"):
            from sqlalchemy.engine import make_url

            self._conninfo = make_url(storage_url).set(drivername="postgresql").render_as_string(False)
        digest = hashlib.sha256(f"churnml-study:{study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._connection = None
        self._held = False

    def acquire(self) -> None:
        if self._conninfo is None:
            return
        if self._connection is None:
            import psycopg

            self._connection = psycopg.connect(self._conninfo, autocommit=True)
        self._connection.execute("SELECT pg_advisory_lock(%s)", (self._key,))
        self._held = True

    def release(self) -> None:
        if self._held and self._connection is not None:
            self._connection.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        self._held = False

    def close(self) -> None:
        self.release()
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, open, waiting) trials of the study."""
    trials = study.get_trials(deepcopy=False, states=FINISHED + _OPEN)
    finished = sum(t.state in FINISHED for t in trials)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return finished, len(trials) - finished, waiting


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def optimize_to_budget(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: int,
    lock: StudyLock,
    deadline: float | None = None,
    done: Callable[[optuna.Study], bool] | None = None,
    callbacks: list | None = None,
    poll_seconds: float = 1.0,
) -> int:
    """Run trials until ``budget`` of the study's trials are finished (by any worker); returns how many
    this worker ran. ``deadline``: a ``time.monotonic()`` after which it claims no new trial; ``done``:
    the study needs no more trials (a perfect score)."""
    ran = 0

    def claimed(trial: optuna.Trial) -> float:
        lock.release()  # the trial exists: the next worker may count it and claim another
        trial.set_user_attr("worker", worker_name())
        return objective(trial)

    try:
        while deadline is None or time.monotonic() < deadline:
            lock.acquire()
            try:
                _fail_stale(study)
                finished, open_, waiting = _counts(study)
                if finished >= budget or (done is not None and done(study)):
                    return ran
                if waiting or finished + open_ < budget:  # a retry to run, or a free slot
                    study.optimize(claimed, n_trials=1, callbacks=callbacks, catch=())
                    ran += 1
                    continue
            finally:
                lock.release()
            time.sleep(poll_seconds)  # the last trials run elsewhere: stay to retry one whose worker dies
        return ran
    finally:
        lock.close()
