"""The CSM pages served under ``/ui``: risk list, account page (with its activity log), retention
overview, alerts and model health.

``queries`` reads the workspace and the CSM store, ``views`` formats and draws (``charts``), ``forms``
reads what CSMs submit, ``app`` is the Starlette app the service mounts.
"""

from churnml.workspace.pages.app import PUBLIC_PATHS, create_pages_app
from churnml.workspace.pages.queries import open_workspace

__all__ = ["PUBLIC_PATHS", "create_pages_app", "open_workspace"]
