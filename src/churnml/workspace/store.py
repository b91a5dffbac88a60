"""The CSM store: what people record about accounts, kept apart from the scores.

``churnml score`` rebuilds the DuckDB workspace on every run; what a CSM did (the activity log),
who owns an account now (assignments), which accounts wait (snoozes) and which alerts went out must
survive that, so they live here, in a transactional database behind SQLAlchemy: a SQLite file under
``CHURNML_HOME`` by default, PostgreSQL with ``CHURNML_DATABASE_URL`` (``postgresql+psycopg://...``).
The schema is versioned by Alembic (``churnml/workspace/migrations``) and brought to the latest
version when a store is opened, one process at a time.

Everything is append-only: a correction is a new activity that ``replaces`` the earlier one, an
assignment or snooze is a new row whose latest one per account is in force, and the database refuses
UPDATE and DELETE on these tables (triggers made by the migration). The pages, ``churnml alerts`` and
the impact work (holdouts, outcomes) all read and write through :class:`Store`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = [
    "OUTCOMES", "Activity", "AccountState", "AlertSent", "NewActivity", "Store", "StoreError", "open_store",
]  # fmt: skip

# what came of a play: the keys are stored, the labels shown
OUTCOMES = {
    "reached": "reached",
    "no_answer": "no answer",
    "saved": "saved",
    "churned_anyway": "churned anyway",
    "not_needed": "not needed",
}
MAX_NOTE = 4000
MAX_TEXT = 200

METADATA = sa.MetaData()


def _entries(name: str, *columns: sa.Column, unique: tuple[str, ...] = ()) -> sa.Table:
    """An append-only table: an id, the account, when and by whom, then its own columns."""
    return sa.Table(
        name, METADATA,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(200), nullable=False, index=not unique),
        sa.Column("recorded_at", sa.DateTime, nullable=False),  # naive UTC
        sa.Column("author", sa.String(200), nullable=False),
        *columns,
        *([sa.UniqueConstraint(*unique, name=f"uq_{name}_crossing")] if unique else []),
    )  # fmt: skip


ACTIVITIES = _entries(
    "activities",
    sa.Column("play", sa.String(MAX_TEXT), nullable=False),
    sa.Column("play_suggested", sa.Boolean, nullable=False),
    sa.Column("done_on", sa.Date, nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("next_step_on", sa.Date, nullable=True),
    sa.Column("replaces", sa.Integer, sa.ForeignKey("activities.id"), nullable=True),
)
ASSIGNMENTS = _entries(
    "assignments", sa.Column("owner", sa.String(MAX_TEXT), nullable=True)
)  # NULL: the data's
SNOOZES = _entries(
    "snoozes", sa.Column("until", sa.Date, nullable=True), sa.Column("reason", sa.Text, nullable=False)
)  # until NULL: woken up early
ALERTS_SENT = _entries(
    "alerts_sent",
    sa.Column("score_date", sa.Date, nullable=False),  # the score that crossed
    sa.Column("previous_date", sa.Date, nullable=False),
    sa.Column("previous_probability", sa.Float, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("previous_tier", sa.String(20), nullable=False),
    sa.Column("tier", sa.String(20), nullable=False),
    sa.Column("owner", sa.String(MAX_TEXT), nullable=True),
    sa.Column("channel", sa.String(40), nullable=False),
    unique=("customer_id", "score_date"),  # the same crossing is never sent twice
)
APPEND_ONLY = ("activities", "assignments", "snoozes", "alerts_sent")


class StoreError(ValueError):
    """Input the store refuses; the message names the field."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _text(name: str, value: str | None, limit: int, required: bool = True) -> str:
    text = (value or "").strip()
    if required and not text:
        raise StoreError(f"{name}: required")
    if len(text) > limit:
        raise StoreError(f"{name}: at most {limit} characters, got {len(text)}")
    return text


@dataclass(frozen=True)
class NewActivity:
    """An activity as a CSM submits it (checked by :meth:`checked`)."""

    customer_id: str
    play: str
    done_on: dt.date
    outcome: str
    note: str = ""
    next_step_on: dt.date | None = None
    play_suggested: bool = False
    replaces: int | None = None

    def checked(self, today: dt.date | None = None) -> NewActivity:
        """The same activity, trimmed; a StoreError names the first field that is wrong."""
        today = today or dt.date.today()
        if self.outcome not in OUTCOMES:
            raise StoreError(f"outcome: one of {', '.join(OUTCOMES.values())}, got {self.outcome[:40]!r}")
        if self.done_on > today + dt.timedelta(days=1):  # a day of slack for time zones
            raise StoreError(f"done_on: {self.done_on} is in the future")
        if self.next_step_on is not None and self.next_step_on < self.done_on:
            raise StoreError(f"next_step_on: {self.next_step_on} is before the play ({self.done_on})")
        return NewActivity(
            _text("customer_id", self.customer_id, 200), _text("play", self.play, MAX_TEXT), self.done_on,
            self.outcome, _text("note", self.note, MAX_NOTE, required=False), self.next_step_on,
            self.play_suggested, self.replaces,
        )  # fmt: skip


@dataclass(frozen=True)
class Activity(NewActivity):
    id: int = 0
    recorded_at: dt.datetime = dt.datetime.min
    author: str = ""
    replaced_by: int | None = None  # a later entry that corrects this one

    @property
    def outcome_label(self) -> str:
        return OUTCOMES.get(self.outcome, self.outcome)


@dataclass(frozen=True)
class AccountState:
    """What the store says about an account now (None where nothing was recorded)."""

    customer_id: str
    owner: str | None = None  # assigned owner, over the data's
    snoozed_until: dt.date | None = None  # only while in force
    snooze_reason: str | None = None
    last_touch: dt.date | None = None  # the latest play done (corrections count, replaced entries not)
    next_step_on: dt.date | None = None  # of that latest play


@dataclass(frozen=True)
class AlertSent:
    customer_id: str
    score_date: dt.date
    previous_date: dt.date
    previous_probability: float
    probability: float
    previous_tier: str
    tier: str
    owner: str | None


_MIGRATION_LOCK = threading.Lock()


@contextlib.contextmanager
def _migration_lock(engine: Engine, connection: sa.Connection) -> Iterator[None]:
    """One process migrates at a time: an advisory lock on PostgreSQL, a lock file beside a SQLite file."""
    with _MIGRATION_LOCK:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(2126021)"))
            yield
            return
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision (a no-op when it is there)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "churnml.workspace:migrations")
    with engine.begin() as connection, _migration_lock(engine, connection):
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys = ON"))
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def open_store(url: str) -> Store:
    """A store on ``url`` with its schema at the latest version."""
    engine = _engine(url)
    try:
        upgrade(engine)
    except Exception:
        engine.dispose()
        raise
    return Store(engine)


def _activity(row: Any, replaced_by: int | None = None) -> Activity:
    return Activity(**{f.name: getattr(row, f.name) for f in fields(NewActivity)}, id=row.id,
                    recorded_at=row.recorded_at, author=row.author, replaced_by=replaced_by)  # fmt: skip


class Store:
    """Reads and appends; nothing here updates or deletes a row."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------------- activity log

    def record_activity(self, activity: NewActivity, author: str, today: dt.date | None = None) -> Activity:
        """Append an activity (a correction names the entry it ``replaces``, of the same account)."""
        new = activity.checked(today)
        author = _text("author", author, 200)
        with self.engine.begin() as con:
            if new.replaces is not None:
                earlier = con.execute(
                    sa.select(ACTIVITIES.c.customer_id).where(ACTIVITIES.c.id == new.replaces)
                )
                if earlier.scalar_one_or_none() != new.customer_id:
                    raise StoreError(f"replaces: no entry {new.replaces} for {new.customer_id}")
            values = {f.name: getattr(new, f.name) for f in fields(NewActivity)}
            row_id = con.execute(
                ACTIVITIES.insert().values(**values, author=author, recorded_at=_utcnow())
            ).inserted_primary_key[0]
            row = con.execute(sa.select(ACTIVITIES).where(ACTIVITIES.c.id == row_id)).one()
        return _activity(row)

    def plays_done(self) -> list[tuple[str, dt.date]]:
        """Every play a CSM logged as done, as (customer_id, done_on): live entries only (a correction
        counts, the entry it replaced does not), and not those whose outcome was "not needed"."""
        replaced = sa.select(ACTIVITIES.c.replaces).where(ACTIVITIES.c.replaces.is_not(None))
        query = sa.select(ACTIVITIES.c.customer_id, ACTIVITIES.c.done_on).where(
            ACTIVITIES.c.outcome != "not_needed", ACTIVITIES.c.id.not_in(replaced)
        )
        with self.engine.connect() as con:
            return [(str(c), d) for c, d in con.execute(query).all()]

    def activities(self, customer_id: str) -> list[Activity]:
        """The account's log, newest play first; a corrected entry says which entry replaced it."""
        query = sa.select(ACTIVITIES).where(ACTIVITIES.c.customer_id == customer_id)
        with self.engine.connect() as con:
            rows = con.execute(query).all()
        replaced = {r.replaces: r.id for r in sorted(rows, key=lambda r: r.id) if r.replaces is not None}
        entries = [_activity(r, replaced.get(r.id)) for r in rows]
        return sorted(entries, key=lambda a: (a.done_on, a.id), reverse=True)

    # ---------------------------------------------------------------------- assignments and snoozes

    def assign(self, customer_id: str, owner: str | None, author: str) -> None:
        """Make ``owner`` the account's owner (None or empty: back to the owner in the data)."""
        owner = _text("owner", owner, MAX_TEXT, required=False) or None
        with self.engine.begin() as con:
            con.execute(ASSIGNMENTS.insert().values(customer_id=_text("customer_id", customer_id, 200),
                                                    owner=owner, author=_text("author", author, 200),
                                                    recorded_at=_utcnow()))  # fmt: skip

    def snooze(self, customer_id: str, until: dt.date | None, reason: str, author: str,
               today: dt.date | None = None) -> None:  # fmt: skip
        """Take the account off the call list until ``until`` (None: wake it up now)."""
        if until is not None and until <= (today or dt.date.today()):
            raise StoreError(f"until: {until} is not in the future")
        reason = _text("reason", reason, MAX_TEXT, required=until is not None)
        with self.engine.begin() as con:
            con.execute(SNOOZES.insert().values(customer_id=_text("customer_id", customer_id, 200), until=until,
                                                reason=reason, author=_text("author", author, 200),
                                                recorded_at=_utcnow()))  # fmt: skip

    # ---------------------------------------------------------------------- state per account

    @staticmethod
    def _latest(table: sa.Table, columns: Iterable[str], customer_ids: list[str] | None) -> sa.Select:
        """The latest row per account of an append-only table (the highest id wins)."""
        latest = sa.select(sa.func.max(table.c.id)).group_by(table.c.customer_id)
        if customer_ids is not None:
            latest = latest.where(table.c.customer_id.in_(customer_ids))
        return sa.select(table.c.customer_id, *(table.c[c] for c in columns)).where(table.c.id.in_(latest))

    def states(
        self, customer_ids: list[str] | None = None, today: dt.date | None = None
    ) -> dict[str, AccountState]:
        """Every account the store knows (or those of ``customer_ids``), as of ``today``."""
        today = today or dt.date.today()
        found: dict[str, dict[str, Any]] = {}
        live = ACTIVITIES.alias("live")
        later = ACTIVITIES.alias("later")
        # each account's latest live play (the database ranks them: one row per account comes back)
        newest = sa.func.row_number().over(
            partition_by=live.c.customer_id, order_by=(live.c.done_on.desc(), live.c.id.desc())
        )
        ranked = sa.select(
            live.c.customer_id, live.c.done_on, live.c.next_step_on, newest.label("newest")
        ).where(~sa.exists().where(later.c.replaces == live.c.id))
        if customer_ids is not None:
            ranked = ranked.where(live.c.customer_id.in_(customer_ids))
        latest_play = ranked.subquery()
        touched = sa.select(
            latest_play.c.customer_id, latest_play.c.done_on, latest_play.c.next_step_on
        ).where(latest_play.c.newest == 1)
        with self.engine.connect() as con:
            for r in con.execute(self._latest(ASSIGNMENTS, ["owner"], customer_ids)):
                found.setdefault(r.customer_id, {})["owner"] = r.owner
            for r in con.execute(self._latest(SNOOZES, ["until", "reason"], customer_ids)):
                if r.until is not None and r.until > today:
                    found.setdefault(r.customer_id, {}).update(snoozed_until=r.until, snooze_reason=r.reason)
            for r in con.execute(touched):
                found.setdefault(r.customer_id, {}).update(last_touch=r.done_on, next_step_on=r.next_step_on)
        return {cid: AccountState(cid, **values) for cid, values in found.items()}

    # ---------------------------------------------------------------------- alerts

    def alerts_already_sent(self, crossings: Iterable[tuple[str, dt.date]]) -> set[tuple[str, dt.date]]:
        """Which of these (customer, score date) crossings went out before."""
        wanted = set(crossings)
        if not wanted:
            return set()
        dates = sorted({d for _, d in wanted})
        query = sa.select(ALERTS_SENT.c.customer_id, ALERTS_SENT.c.score_date).where(
            ALERTS_SENT.c.score_date.in_(dates)
        )
        with self.engine.connect() as con:
            return {(r.customer_id, r.score_date) for r in con.execute(query)} & wanted

    def record_alerts_sent(self, alerts: Iterable[AlertSent], channel: str) -> int:
        """Record alerts as sent, in one transaction; those sent before are left out. Returns how many
        were new."""
        rows = [{**{f.name: getattr(a, f.name) for f in fields(AlertSent)}, "channel": channel,
                 "recorded_at": _utcnow(), "author": "churnml alerts"} for a in alerts]  # fmt: skip
        done = self.alerts_already_sent((r["customer_id"], r["score_date"]) for r in rows)
        rows = [r for r in rows if (r["customer_id"], r["score_date"]) not in done]
        if rows:
            with self.engine.begin() as con:
                con.execute(ALERTS_SENT.insert(), rows)
        return len(rows)
