"""Holdouts and their outcomes: who was held out of the call list in which campaign, and what came of it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("holdouts", "outcomes")


def _entries(name: str, *columns: sa.Column) -> None:
    """An append-only table with one row per account and campaign period."""
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("period", sa.String(20), nullable=False),
        *columns,
        sa.UniqueConstraint("customer_id", "period", name=f"uq_{name}_account_period"),
    )


def upgrade() -> None:
    _entries(
        "holdouts",
        sa.Column("scored_on", sa.Date, nullable=False),
        sa.Column("arm", sa.String(10), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("play", sa.String(200), nullable=True),
        sa.Column("mrr", sa.Float, nullable=True),
        sa.Column("churn_probability", sa.Float, nullable=False),
        sa.Column("horizon_days", sa.Integer, nullable=False),
    )
    _entries(
        "outcomes",
        sa.Column("churned", sa.Boolean, nullable=False),
        sa.Column("revenue_kept", sa.Float, nullable=False),
        sa.Column("matured_on", sa.Date, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":  # the function revision 0001 made
        for table in TABLES:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION churnml_append_only()")  # fmt: skip
        return
    for table in TABLES:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} BEGIN "
                       f"SELECT RAISE(ABORT, '{table} is append-only: record a new entry instead'); END")  # fmt: skip


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
