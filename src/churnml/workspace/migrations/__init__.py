"""Alembic migrations of the CSM store (:mod:`churnml.workspace.store`), run by ``store.upgrade``."""
