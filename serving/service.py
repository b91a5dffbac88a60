"""The churn prediction service (BentoML 1.4), for `bentoml build -f serving/bentofile.yaml .`.

The service class lives in the package (``churnml.service.bento``), so `churnml serve` runs it from an
installed wheel without this checkout; this module only names it where the bentofile looks.

Run with `churnml serve` (imports models:/churn@champion into the BentoML store, then starts the
service), or `bentoml serve serving.service:ChurnService` with CHURNML_BENTO_MODEL=churn:<version>.
"""

from __future__ import annotations

from churnml.service.bento import ChurnService

__all__ = ["ChurnService"]
