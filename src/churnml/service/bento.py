"""The churn prediction service (BentoML 1.4): thin wiring of the package's parts.

It lives in the package, not in the checkout, so `churnml serve` runs from an installed wheel
(``bentoml serve churnml.service.bento:ChurnService``); ``serving/service.py`` re-exports it for
`bentoml build`. BentoML reads a service's configuration when the class is defined, so the settings
it needs (workers, timeout, access log, and uvicorn's header timeout) are read when this module is
imported, in the service's own processes.
"""

from __future__ import annotations

import logging

import bentoml

from churnml.config import Settings
from churnml.explain.reasons import REASONS_SHOWN
from churnml.service import protocol
from churnml.service.middleware import OPEN_PATHS, ServiceMiddleware
from churnml.service.model_store import packaged_model_ref
from churnml.service.parsing import COMPUTE_SCOPE_KEY, ExplainRequest, PredictRequest
from churnml.service.predictor import Predictor, answer
from churnml.service.schemas import Customers, ExplainResponse, ModelInfo, PredictResponse, TopK
from churnml.service.worker import calm_garbage_collector, quiet_bad_input_logs
from churnml.workspace.pages import create_pages_app

__all__ = ["ChurnService"]

log = logging.getLogger("churnml.service")

_settings = Settings.from_env()
protocol.install(_settings.header_timeout)
_pages = create_pages_app()
API_ROUTES = ["/predict", "/explain", "/model"]
ROUTES = [*API_ROUTES, *OPEN_PATHS, "/", "/docs.json", "/schema.json", "/static_content/{path:path}",
          *(f"/ui{r.path}" for r in _pages.routes)]  # fmt: skip


@bentoml.asgi_app(_pages, path="/ui")  # the CSM pages, behind the same authentication
@bentoml.service(
    name="churn",
    workers=_settings.serve_workers,
    traffic={"timeout": _settings.request_timeout},
    metrics={"enabled": False},  # churnml.service.metrics serves /metrics, labelled by route template
    tracing={"excluded_urls": ["/"]},
    logging={"access": {"enabled": _settings.access_log}},
)
class ChurnService:
    if (packaged := packaged_model_ref()) is not None:  # declared so `bentoml build` packages it
        packaged_model = packaged

    def __init__(self) -> None:
        logging.getLogger("churnml").setLevel(
            logging.INFO
        )  # sign-ins, lockouts, timeouts: into the service log
        quiet_bad_input_logs()
        self.predictor: Predictor | None = None
        self.error: str | None = None
        try:
            self.predictor = Predictor.from_settings(Settings.from_env())
            info = self.predictor.info
            log.info("serving churn model %s (registry version %s, alias %s)",
                     info.bento_tag, info.version, info.alias)  # fmt: skip
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

    # `async` on purpose: a few feature records are answered on the event loop (no thread hand-off);
    # larger requests go to the worker's compute threads (churnml.service.predictor.answer)
    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(self, customers: Customers, ctx: bentoml.Context) -> PredictResponse:
        """Calibrated churn probability, health score, risk tier and revenue at risk per customer."""
        return await answer(ctx.request.scope.get(COMPUTE_SCOPE_KEY), self._ready().predict, customers)

    @bentoml.api(route="/explain", input_spec=ExplainRequest)
    async def explain(
        self, customers: Customers, ctx: bentoml.Context, top_k: TopK = REASONS_SHOWN
    ) -> ExplainResponse:
        """The prediction plus the top reasons in plain sentences, with their SHAP contributions."""
        return await answer(ctx.request.scope.get(COMPUTE_SCOPE_KEY), self._ready().explain, customers, top_k)

    @bentoml.api(route="/model")
    async def model(self) -> ModelInfo:
        """Which model is being served (registry version, alias, BentoML tag)."""
        return self._ready().info


ChurnService.add_asgi_middleware(ServiceMiddleware, routes=ROUTES)
