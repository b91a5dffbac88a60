"""MLflow tracking and registry: one run per training, the model registered as ``churn``.

A training run logs parameters, out-of-time metrics beside the baselines', dataset digests, the
feature catalogue, plots, the Optuna trial history, the test feature table (so a later promotion
compares models on the same rows) and the model: LightGBM text + JSON metadata, wrapped as an MLflow
pyfunc with a signature and an input example. The new version gets the alias ``challenger``;
``champion`` moves only through :func:`promote_challenger`, so a failed training never touches it.

One module per role: `tracking` (where the store is, and whether it answers), `runs` (logging a
training), `plots` (its figures), `models` (fetching a registered model), `promotion` (the gate).
"""

from churnml.registry.models import download_model, load_model
from churnml.registry.promotion import PromotionResult, file_lock, promote_challenger, promotion_lock
from churnml.registry.runs import close_unfinished_runs, log_training
from churnml.registry.tracking import MODEL_NAME, check_tracking_server, experiment_id, tracking_uri

__all__ = [
    "MODEL_NAME",
    "download_model",
    "tracking_uri",
    "check_tracking_server",
    "log_training",
    "experiment_id",
    "load_model",
    "promote_challenger",
    "promotion_lock",
    "file_lock",
    "close_unfinished_runs",
    "PromotionResult",
]
