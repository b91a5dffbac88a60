"""The CSM store (churnml.workspace.store): the same tests on SQLite (the default) and on a real
PostgreSQL server started for the run (tests/pg.py)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from churnml.config import Settings
from churnml.workspace.store import AlertSent, NewActivity, Store, StoreError, open_store
from tests.pg import PostgresServer

TODAY = dt.date(2025, 7, 3)
_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return Settings(home=tmp_path).store_url
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"store_{next(_names)}")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def call(customer: str = "C0001", **changes: object) -> NewActivity:
    values = dict(customer_id=customer, play="Usage review and training", done_on=TODAY, outcome="reached",
                  note="Spoke to the admin", next_step_on=TODAY + dt.timedelta(days=14), play_suggested=True)  # fmt: skip
    return NewActivity(**{**values, **changes})  # type: ignore[arg-type]


def test_an_activity_is_kept_with_its_author_and_read_back(store: Store, store_url: str) -> None:
    saved = store.record_activity(call(note="  Spoke to the admin  "), "ana", today=TODAY)
    assert saved.id > 0 and saved.author == "ana" and saved.note == "Spoke to the admin"
    reopened = open_store(store_url)  # another process, or after `churnml score` rebuilt the workspace
    try:
        [entry] = reopened.activities("C0001")
    finally:
        reopened.close()
    assert (entry.play, entry.play_suggested, entry.done_on, entry.outcome_label, entry.next_step_on) == (
        "Usage review and training",
        True,
        TODAY,
        "reached",
        TODAY + dt.timedelta(days=14),
    )
    assert entry.recorded_at.date() >= TODAY and store.activities("C0002") == []


def test_a_correction_is_a_new_entry_and_the_first_one_stays(store: Store) -> None:
    first = store.record_activity(call(outcome="no_answer"), "ana", today=TODAY)
    store.record_activity(call(done_on=TODAY - dt.timedelta(days=5)), "ben", today=TODAY)
    fixed = store.record_activity(call(outcome="saved", replaces=first.id), "ben", today=TODAY)
    log = store.activities("C0001")
    assert [a.id for a in log][0] == fixed.id and len(log) == 3  # newest play first, nothing removed
    assert next(a for a in log if a.id == first.id).replaced_by == fixed.id
    state = store.states(today=TODAY)["C0001"]
    assert state.last_touch == TODAY and state.next_step_on == TODAY + dt.timedelta(days=14)
    with pytest.raises(StoreError, match="replaces: no entry"):
        store.record_activity(call("C0002", replaces=first.id), "ana", today=TODAY)  # another account's entry


def test_the_database_refuses_to_change_or_remove_a_row(store: Store) -> None:
    store.record_activity(call(), "ana", today=TODAY)
    store.assign("C0001", "Ben Carter", "ana")
    for statement in ("UPDATE activities SET note = 'rewritten'", "DELETE FROM activities",
                      "UPDATE assignments SET owner = 'x'", "DELETE FROM snoozes"):  # fmt: skip
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as con:
            if statement.startswith("DELETE FROM snoozes"):
                store.snooze("C0001", TODAY + dt.timedelta(days=3), "holiday", "ana", today=TODAY)
            con.execute(sa.text(statement))
    assert store.activities("C0001")[0].note == "Spoke to the admin"


@pytest.mark.parametrize(("changes", "field"), [
    ({"outcome": "maybe"}, "outcome"), ({"play": "  "}, "play"), ({"done_on": TODAY + dt.timedelta(days=9)}, "done_on"),
    ({"next_step_on": TODAY - dt.timedelta(days=1)}, "next_step_on"), ({"note": "x" * 5000}, "note"),
])  # fmt: skip
def test_bad_input_is_refused_naming_the_field(store: Store, changes: dict, field: str) -> None:
    with pytest.raises(StoreError, match=f"^{field}:"):
        store.record_activity(call(**changes), "ana", today=TODAY)
    assert store.activities("C0001") == []


def test_the_latest_assignment_and_snooze_are_in_force_until_the_snooze_ends(store: Store) -> None:
    store.assign("C0001", "Ben Carter", "ana")
    store.assign("C0001", "Isla Brown", "ben")
    store.assign("C0002", "Ben Carter", "ana")
    store.assign("C0002", "", "ana")  # back to the owner in the data
    until = TODAY + dt.timedelta(days=10)
    store.snooze("C0003", until, "On holiday until the 13th", "ana", today=TODAY)
    states = store.states(today=TODAY)
    assert states["C0001"].owner == "Isla Brown" and states["C0002"].owner is None
    assert (states["C0003"].snoozed_until, states["C0003"].snooze_reason) == (
        until,
        "On holiday until the 13th",
    )
    assert "C0003" not in store.states(today=until)  # on its date it is back
    store.snooze("C0003", None, "", "ana", today=TODAY)  # woken up early
    assert "C0003" not in store.states(today=TODAY)
    with pytest.raises(StoreError, match="^until:"):
        store.snooze("C0003", TODAY, "today is not a snooze", "ana", today=TODAY)
    with pytest.raises(StoreError, match="^reason:"):
        store.snooze("C0003", until, " ", "ana", today=TODAY)
    assert set(store.states(["C0001"], today=TODAY)) == {"C0001"}


def test_the_same_crossing_is_recorded_once(store: Store) -> None:
    alert = AlertSent("C0001", TODAY, TODAY - dt.timedelta(days=30), 0.2, 0.6, "medium", "high", "Ana Souza")
    assert store.record_alerts_sent([alert], "webhook") == 1
    assert store.record_alerts_sent([alert, alert], "csv") == 0
    assert store.alerts_already_sent([("C0001", TODAY), ("C0002", TODAY)]) == {("C0001", TODAY)}
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as con:  # the database holds the line too
        con.execute(sa.text("INSERT INTO alerts_sent (customer_id, score_date, previous_date, previous_probability, "
                            "probability, previous_tier, tier, recorded_at, author, channel) VALUES ('C0001', :d, :d, 0.1, "
                            "0.7, 'low', 'high', :t, 'x', 'x')"), {"d": TODAY, "t": dt.datetime(2025, 7, 3)})  # fmt: skip


def test_the_schema_is_migrated_once_and_versioned(store: Store, store_url: str) -> None:
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as con:
        assert MigrationContext.configure(con).get_current_revision() == "0002"
    open_store(store_url).close()  # opening again changes nothing
    with store.engine.connect() as con:
        assert MigrationContext.configure(con).get_current_revision() == "0002"


def test_the_migrations_make_exactly_the_tables_the_code_declares(store: Store) -> None:
    """Alembic's autogenerate, run against the migrated database, proposes nothing: the code declares
    every table, column, nullability and constraint the migrations made (it once missed the holdouts
    tables, which autogenerate would have dropped)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from churnml.workspace.holdouts import HOLDOUT_METADATA
    from churnml.workspace.store import METADATA

    with store.engine.connect() as con:
        diff = compare_metadata(MigrationContext.configure(con), [METADATA, HOLDOUT_METADATA])
    assert diff == [], diff


def test_the_store_is_a_sqlite_file_under_home_unless_a_url_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNML_HOME", str(tmp_path))
    monkeypatch.delenv("CHURNML_DATABASE_URL", raising=False)
    assert Settings.from_env().store_url == f"sqlite:///{tmp_path.resolve()}/csm.db"
    monkeypatch.setenv("CHURNML_DATABASE_URL", "postgresql+psycopg://csm@db.internal/churnml")
    assert Settings.from_env().store_url == "postgresql+psycopg://csm@db.internal/churnml"
    assert "db.internal" not in repr(Settings.from_env())  # a URL may carry a password
    monkeypatch.setenv("CHURNML_DATABASE_URL", "db.internal")
    with pytest.raises(ValueError, match="CHURNML_DATABASE_URL"):
        Settings.from_env()
