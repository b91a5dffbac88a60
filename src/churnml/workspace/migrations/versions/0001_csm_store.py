"""The CSM store: activity log, assignments, snoozes, alerts sent; append-only by trigger.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("activities", "assignments", "snoozes", "alerts_sent")


def _entries(name: str, *columns: sa.Column, unique: tuple[str, ...] = ()) -> None:
    """An append-only table as revision 0001 made it: id, account, when and by whom, its own columns."""
    op.create_table(
        name,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False, index=not unique),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        *columns,
        *([sa.UniqueConstraint(*unique, name=f"uq_{name}_crossing")] if unique else []),
    )


def upgrade() -> None:
    _entries(
        "activities",
        sa.Column("play", sa.String(200), nullable=False),
        sa.Column("play_suggested", sa.Boolean, nullable=False),
        sa.Column("done_on", sa.Date, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("next_step_on", sa.Date, nullable=True),
        sa.Column("replaces", sa.Integer, sa.ForeignKey("activities.id"), nullable=True),
    )
    _entries("assignments", sa.Column("owner", sa.String(200), nullable=True))
    _entries(
        "snoozes", sa.Column("until", sa.Date, nullable=True), sa.Column("reason", sa.Text, nullable=False)
    )
    _entries(
        "alerts_sent",
        sa.Column("score_date", sa.Date, nullable=False),
        sa.Column("previous_date", sa.Date, nullable=False),
        sa.Column("previous_probability", sa.Float, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("previous_tier", sa.String(20), nullable=False),
        sa.Column("tier", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("channel", sa.String(40), nullable=False),
        unique=("customer_id", "score_date"),
    )
    _append_only()


def _append_only() -> None:
    """The database itself refuses to change or remove a recorded row."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION churnml_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION '% is append-only: record a new entry instead', TG_TABLE_NAME; END $$"
        )
        for table in APPEND_ONLY:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION churnml_append_only()")  # fmt: skip
        return
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} BEGIN "
                       f"SELECT RAISE(ABORT, '{table} is append-only: record a new entry instead'); END")  # fmt: skip


def downgrade() -> None:
    for table in reversed(APPEND_ONLY):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS churnml_append_only()")
