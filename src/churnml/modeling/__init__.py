"""Labelled rows -> a tuned, calibrated, evaluated churn model: the ``modeling`` stage.

- `config`: model and search parameters (training/config.yaml);
- `splits`: out of time when a purged fold fits, else held-out customers;
- `tuning`: Optuna over LightGBM, binned once, stopped early, pruned between folds;
- `calibrate`, `baselines`: the calibrator, and what the model must beat on the same test rows;
- `train`: behaviour tables from a spec; `table`: ready-made feature tables (``--table``).
"""

from __future__ import annotations

from churnml.modeling.config import TrainConfig, load_train_config
from churnml.modeling.splits import Split, holdout_mask, time_splits
from churnml.modeling.table import load_snapshot_table, train_snapshot
from churnml.modeling.train import TrainResult, TrainTask, TuningRun, spec_task, train_model
from churnml.modeling.tuning import tune_lightgbm

__all__ = [
    "Split",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "TuningRun",
    "holdout_mask",
    "load_snapshot_table",
    "load_train_config",
    "spec_task",
    "time_splits",
    "train_model",
    "train_snapshot",
    "tune_lightgbm",
]
