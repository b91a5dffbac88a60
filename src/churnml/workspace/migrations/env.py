"""Alembic's entry point: migrate on the connection ``churnml.workspace.store.upgrade`` hands over."""

from alembic import context

from churnml.workspace.holdouts import HOLDOUT_METADATA
from churnml.workspace.store import METADATA

connection = context.config.attributes["connection"]
# every table the migrations create, so that autogenerate never proposes dropping one
context.configure(connection=connection, target_metadata=[METADATA, HOLDOUT_METADATA], render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
