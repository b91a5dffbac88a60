"""The model the service serves: imported from the MLflow registry into the BentoML store, then loaded.

The BentoML version of a registry model is ``v<registry version>-<run id>``, so importing the same
version twice is a no-op and a promoted model gets a new tag. Only the LightGBM text and the JSON
metadata are copied (no pickle).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from churnml.config import Settings
from churnml.model import ChurnModel
from churnml.service.schemas import ModelInfo

__all__ = ["PACKAGED_MODEL", "import_registered_model", "load_serving_model", "packaged_model_ref"]

log = logging.getLogger(__name__)

PACKAGED_MODEL = "churn:latest"  # what `bentoml build` packages and a built bento serves


def _load_from_folder(folder: Path) -> ChurnModel:
    return ChurnModel.load(folder)


def import_registered_model(settings: Settings, alias: str | None = None) -> str:
    """Import ``models:/churn@<alias>`` from MLflow into the BentoML model store; return the tag.

    The BentoML version is ``v<registry version>-<run id>``, so re-importing the same version is a
    no-op and a promoted model gets a new tag.
    """
    import bentoml
    from bentoml.exceptions import NotFound
    from mlflow.exceptions import MlflowException

    from churnml.registry import MODEL_NAME, check_tracking_server, file_lock, tracking_uri

    alias = alias or settings.model_alias
    uri = tracking_uri(settings)
    client = check_tracking_server(uri)
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException as err:
        raise LookupError(
            f"no model 'models:/{MODEL_NAME}@{alias}' in the registry at {uri}: {err.message}"
        ) from None
    version = f"v{mv.version}-{(mv.run_id or 'norun')[:12]}"
    tag = f"{MODEL_NAME}:{version}"
    # workers of one service start together: one imports, the others wait and find it in the store
    store = Path(os.environ.get("BENTOML_HOME", settings.bentoml_home))
    with file_lock(store / ".churnml-import.lock", timeout=600, purpose="model import"):
        try:
            bentoml.models.get(tag)
            return tag
        except NotFound:
            pass
        _import_version(client, mv, alias, uri, tag)
    log.info(
        "imported models:/%s/%s (alias %s) into the BentoML store as %s", MODEL_NAME, mv.version, alias, tag
    )
    return tag


def _import_version(client: Any, mv: Any, alias: str, uri: str, tag: str) -> None:
    import bentoml

    from churnml.registry import MODEL_NAME, download_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(f"models:/{MODEL_NAME}/{mv.version}", client, Path(tmp))
        model = _load_from_folder(folder)  # refuse to import a corrupt model
        labels = {"alias": alias, "registry_version": str(mv.version), "run_id": mv.run_id or ""}
        meta = {"registry": f"models:/{MODEL_NAME}/{mv.version}", "tracking_uri": uri,
                "horizon_days": model.horizon_days, "trained_through": str(model.metadata.get("trained_through"))}  # fmt: skip
        with bentoml.models.create(tag, labels=labels, metadata=meta) as bm:
            for name in ("booster.txt", "model.json"):
                shutil.copy2(folder / name, Path(bm.path) / name)


def packaged_model_ref() -> Any:
    """``BentoModel("churn:latest")`` when the store has a churn model, else None.

    Declaring the model on the service makes `bentoml build` package it, but BentoML then refuses to
    start at all without it; undeclared, a service with no model stays alive and reports not ready.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(PACKAGED_MODEL)
    except NotFound:
        return None
    return bentoml.models.BentoModel(PACKAGED_MODEL)


def load_serving_model(settings: Settings) -> tuple[ChurnModel, ModelInfo]:
    """The model to serve: ``CHURNML_BENTO_MODEL`` if set; in a built bento the packaged one; else the
    registry alias (``models:/churn@champion``), imported into the BentoML store."""
    import bentoml
    from bentoml.exceptions import NotFound

    if settings.bento_model:
        tag = settings.bento_model
    elif settings.model_source == "bento":  # a built bento: the model packaged with it
        tag = PACKAGED_MODEL
    else:
        tag = import_registered_model(settings)
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise LookupError(f"BentoML model {tag} is not in the store at {settings.bentoml_home}") from None
    model = _load_from_folder(Path(stored.path))
    labels = stored.info.labels
    info = ModelInfo(
        name=stored.tag.name, version=labels.get("registry_version", str(stored.tag.version)),
        alias=labels.get("alias", ""), bento_tag=str(stored.tag), run_id=labels.get("run_id", ""),
        horizon_days=model.horizon_days,
    )  # fmt: skip
    return model, info
