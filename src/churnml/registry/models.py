"""A registered churn model, fetched through the given client's store."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from churnml.model import ChurnModel
from churnml.registry.tracking import MODEL_NAME

__all__ = ["download_model", "load_model"]


def download_model(uri: str, client: MlflowClient, dst: Path) -> Path:
    """Download the churn model folder behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Resolved through ``client`` (its tracking and registry store), never MLflow's process-wide default
    registry, which in MLflow 3 is a SQLite file relative to the working directory.
    """
    name, _, ref = uri.removeprefix("models:/").partition("/")
    alias = None
    if "@" in name:
        name, alias = name.split("@", 1)
    try:
        version = client.get_model_version_by_alias(name, alias).version if alias else ref
        source = client.get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                    tracking_uri=client.tracking_uri)  # fmt: skip
    except MlflowException as err:
        raise LookupError(f"model {uri} is not available: {err.message}") from None
    return Path(local) / "artifacts" / "churn_model"


def load_model(uri: str = f"models:/{MODEL_NAME}@champion", client: MlflowClient | None = None) -> ChurnModel:
    """The native churn model (booster + calibrator + metadata) behind a model URI."""
    client = client or MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        return ChurnModel.load(download_model(uri, client, Path(tmp)))
