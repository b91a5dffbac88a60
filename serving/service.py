"""The churn prediction service (BentoML 1.4). Thin: all logic lives in churnml.serve and churnml.pages.

Run with `churnml serve` (imports models:/churn@champion into the BentoML store, then starts this
service), or `bentoml serve serving.service:ChurnService` with CHURNML_BENTO_MODEL=churn:<version>.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import bentoml
from pydantic import Field

from churnml.config import Settings
from churnml.pages import create_pages_app
from churnml.serve import (
    Customers,
    ExplainResponse,
    JSONOnlyMiddleware,
    ModelInfo,
    OpenAPIMiddleware,
    Predictor,
    PredictResponse,
    ServiceUnavailableMiddleware,
    TokenAuthMiddleware,
    answer,
    calm_garbage_collector,
    packaged_model_ref,
    quiet_bad_input_logs,
)

log = logging.getLogger("churnml.service")


# The API methods are `async` on purpose: a feature-record request is a few milliseconds of CPU, and
# running it on the event loop avoids a thread hand-off (lower tail latency, same throughput); raw
# behaviour, which takes longer, goes to a thread (churnml.serve.answer).
@bentoml.asgi_app(create_pages_app(), path="/ui")  # the CSM pages, behind the same token
@bentoml.service(
    name="churn",
    workers=int(os.environ.get("CHURNML_SERVE_WORKERS", "1")),
    traffic={"timeout": 30},
    logging={"access": {"enabled": os.environ.get("CHURNML_ACCESS_LOG", "0") == "1"}},
)
class ChurnService:
    if (packaged := packaged_model_ref()) is not None:  # declared so `bentoml build` packages it
        packaged_model = packaged

    def __init__(self) -> None:
        quiet_bad_input_logs()
        self.predictor: Predictor | None = None
        self.error: str | None = None
        try:
            self.predictor = Predictor.from_settings(Settings.from_env())
            info = self.predictor.info
            log.info(
                "serving churn model %s (registry version %s, alias %s)",
                info.bento_tag,
                info.version,
                info.alias,
            )
            calm_garbage_collector()
        except Exception as err:  # noqa: BLE001 - any failure means: not ready, say why
            self.error = f"{type(err).__name__}: {err}"
            log.error("NOT READY: no servable churn model: %s", self.error)

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    def _ready(self) -> Predictor:
        if self.predictor is None:
            raise bentoml.exceptions.ServiceUnavailable(f"no model loaded: {self.error}")
        return self.predictor

    @bentoml.api(route="/predict")
    async def predict(self, customers: Customers) -> PredictResponse:
        """Calibrated churn probability, health score, risk tier and revenue at risk per customer."""
        return await answer(self._ready().predict, customers)

    @bentoml.api(route="/explain")
    async def explain(
        self, customers: Customers, top_k: Annotated[int, Field(ge=1, le=20)] = 3
    ) -> ExplainResponse:
        """The prediction plus the top reasons in plain sentences, with their SHAP contributions."""
        return await answer(self._ready().explain, customers, top_k)

    @bentoml.api(route="/model")
    async def model(self) -> ModelInfo:
        """Which model is being served (registry version, alias, BentoML tag)."""
        return self._ready().info


ChurnService.add_asgi_middleware(ServiceUnavailableMiddleware)
ChurnService.add_asgi_middleware(TokenAuthMiddleware)
ChurnService.add_asgi_middleware(OpenAPIMiddleware)
ChurnService.add_asgi_middleware(JSONOnlyMiddleware)
