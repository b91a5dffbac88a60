"""The final fit on a Dask cluster with LightGBM's own distributed training (``lightgbm.dask``).

Tuning and calibration need only the development rows' folds; the final booster is the fit that
grows with the data (every development row, the tuned number of rounds). On a cluster it is fitted
data-parallel by LightGBM itself, with the tuned parameters, and calibrated by the same calibrator as on
one machine (`churnml.modeling.train`): only where the trees are grown changes.

Two known problems of LightGBM on Dask are handled here rather than hoped away:

* **ports**: each worker's LightGBM listens on a port from an explicit range (``base_port`` on), chosen
  per fit and checked free on that worker, and the ``machines`` list names exactly the workers that hold
  data (LightGBM waits forever for a machine that never joins);
* **hangs**: every fit has a wall-clock limit; a fit past it restarts the workers (which ends the
  stuck LightGBM network threads) and raises ``TimeoutError``.
"""

from __future__ import annotations

import logging
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd

from churnml.features.sets import FeatureSet

if TYPE_CHECKING:  # dask is the optional 'distributed' extra
    from distributed import Client

__all__ = ["DaskFit", "dask_booster"]

log = logging.getLogger(__name__)

PORT_SPAN = 200  # the range of ports LightGBM may use on each worker, from base_port


@dataclass
class DaskFit:
    """A Dask cluster to fit on, LightGBM's port range on its workers and the time limit of one fit."""

    client: Client
    base_port: int = 12400
    timeout_seconds: float = 600.0
    partitions_per_worker: int = 1
    _fits: int = field(default=0, repr=False)

    def next_offset(self) -> int:
        """Consecutive fits start at different ports: a port closed by the last fit may linger in
        TIME_WAIT, and LightGBM would fail to bind it."""
        self._fits += 1
        return (self._fits - 1) * 8 % PORT_SPAN


def _free_port_from(start: int, end: int) -> int:
    """Runs on a worker: the first port in [start, end) that it can bind."""
    for port in range(start, end):
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {start}-{end - 1} for LightGBM")


def _machines(fit: DaskFit, workers: list[str]) -> str:
    """host:port for each worker that holds data, each port free on its worker and unique per host."""
    from urllib.parse import urlparse

    offset, out, taken = fit.next_offset(), [], set()
    for worker in sorted(workers):
        host = urlparse(worker).hostname
        start = fit.base_port + offset
        while True:
            port = fit.client.run(_free_port_from, start, fit.base_port + PORT_SPAN, workers=[worker])[worker]
            if (host, port) not in taken:
                break
            start = port + 1
        taken.add((host, port))
        out.append(f"{host}:{port}")
    return ",".join(out)


WORKER_WAIT_SECONDS = 60.0  # the longest a fit waits for a worker (a restart, a cluster still starting)


def _cluster_workers(fit: DaskFit) -> list[str]:
    """The addresses of the cluster's workers, once at least one has joined. A restart (after a fit past
    its limit) or a cluster still starting can leave none for a moment, and the scheduler's summary
    has been seen to list none while both workers ran (distributed 2026.8, once in three full runs of
    the tests): ask each worker then."""
    wait = min(WORKER_WAIT_SECONDS, max(1.0, fit.timeout_seconds))
    try:
        fit.client.wait_for_workers(1, timeout=wait)
    except TimeoutError:
        raise TimeoutError(
            f"distributed training: no Dask worker joined the scheduler at {fit.client.scheduler.address} "
            f"within {wait:.0f} s"
        ) from None
    workers = sorted(fit.client.scheduler_info(n_workers=-1)["workers"]) or sorted(
        fit.client.run(socket.gethostname)
    )
    if not workers:
        raise TimeoutError(
            f"distributed training: the scheduler at {fit.client.scheduler.address} has no worker"
        )
    return workers


def _spread(fit: DaskFit, x: pd.DataFrame, y: np.ndarray):  # noqa: ANN202
    """The rows as Dask collections, a share placed on each worker (LightGBM trains one part per worker
    and must know which workers hold data). Rows read by Dask itself (``dd.read_parquet``) would stay
    on the workers; rows from here travel once, as scattered parts, never inside the task graph."""
    import dask.dataframe as dd

    workers = _cluster_workers(fit)
    frame = x.assign(_label=np.asarray(y, dtype=float)).reset_index(drop=True)
    chunks = [
        c for c in np.array_split(np.arange(len(frame)), len(workers) * fit.partitions_per_worker) if len(c)
    ]
    placed = [workers[i % len(workers)] for i in range(len(chunks))]
    futures = [
        fit.client.scatter(frame.iloc[rows], workers=[w], hash=False)
        for rows, w in zip(chunks, placed, strict=True)
    ]
    data = dd.from_delayed(futures, meta=frame.iloc[:0], verify_meta=False)
    # the futures keep the parts on the workers (the collection names them by key only): hold them
    return data.drop(columns="_label"), data["_label"], sorted(set(placed)), futures


def _fit(model, x_dask, y_dask, categorical: list[str]) -> None:  # noqa: ANN001
    with warnings.catch_warnings():
        # the sklearn wrapper always passes n_jobs, which lightgbm.dask replaces by each worker's threads
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(x_dask, y_dask, categorical_feature=categorical or "auto")


def dask_booster(
    params: dict, x: pd.DataFrame, y: np.ndarray, fs: FeatureSet, rounds: int, fit: DaskFit
) -> lgb.Booster:
    """A booster fitted data-parallel on the cluster with ``params`` (LightGBM's names) for ``rounds``."""
    from lightgbm.dask import DaskLGBMClassifier

    x_dask, y_dask, holders, parts = _spread(fit, x, y)
    params = {k: v for k, v in params.items() if k not in ("num_threads", "num_boost_round")}
    model = DaskLGBMClassifier(
        client=fit.client, n_estimators=rounds, machines=_machines(fit, holders),
        time_out=max(1, int(fit.timeout_seconds // 60)),  # LightGBM's socket timeout, in minutes
        **params,
    )  # fmt: skip
    categorical = [c for c in fs.categorical_columns if c in x.columns]
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(_fit, model, x_dask, y_dask, categorical)
    try:
        future.result(timeout=fit.timeout_seconds)
    except FutureTimeout:
        log.error("lightgbm.dask fit passed %.0f s: restarting the workers", fit.timeout_seconds)
        fit.client.restart()  # ends the stuck network threads; the fit's thread then returns with an error
        raise TimeoutError(
            f"distributed training: the fit did not finish in {fit.timeout_seconds:.0f} s "
            "(CHURNML_DASK_TIMEOUT); the workers were restarted"
        ) from None
    finally:
        pool.shutdown(wait=False)
        fit.client.cancel(parts)
    return model.booster_
