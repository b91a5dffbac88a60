"""Alembic's entry point: migrate on the connection ``churnml.workspace.store.upgrade`` hands over."""

from alembic import context

from churnml.workspace.store import METADATA

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=METADATA, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
