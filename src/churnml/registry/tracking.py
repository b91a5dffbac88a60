"""Where the MLflow store is, and whether it answers before any expensive work starts."""

from __future__ import annotations

import os
import urllib.request

from mlflow.tracking import MlflowClient

from churnml.config import Settings

__all__ = ["EXPERIMENT", "MODEL_NAME", "check_tracking_server", "experiment_id", "tracking_uri"]

MODEL_NAME = "churn"
EXPERIMENT = "churnml"


def tracking_uri(settings: Settings) -> str:
    """$MLFLOW_TRACKING_URI, else an absolute-path SQLite store under the churnml home."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{(settings.home / 'mlflow.db').resolve()}"


def check_tracking_server(uri: str) -> MlflowClient:
    """Fail fast, before any expensive work, if the tracking store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        # one quick probe instead of MLflow's retry loop with backoff (minutes against a dead server)
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
        except (OSError, ValueError) as err:
            raise RuntimeError(f"MLflow tracking server {uri} is not reachable: {err}") from None
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # connection refused, bad URI, locked database...
        raise RuntimeError(
            f"MLflow tracking store {uri} is not reachable: {str(err).splitlines()[0]}"
        ) from None
    return client


def experiment_id(client: MlflowClient, settings: Settings, name: str = EXPERIMENT) -> str:
    """The id of experiment ``name``, created if new (a local store keeps artifacts under CHURNML_HOME)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):  # a local store keeps artifacts beside it, absolute
        location = (settings.home / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)
