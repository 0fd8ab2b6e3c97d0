"""tolem.db.direct: Core statements on the driver's cursor store what SQLAlchemy would.

The payment path's inserts and updates skip SQLAlchemy's execution machinery; these
tests write the same rows both ways, on SQLite and PostgreSQL, and compare what the
database holds, then check the errors and the row counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from tolem.db.base import Money, UTCDateTime
from tolem.db.direct import Direct
from tolem.db.engine import Database

metadata = MetaData()
rows = Table(
    "direct_rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("code", String(20), unique=True, nullable=False),
    Column("amount", Money()),
    Column("at", UTCDateTime()),
    Column("flag", Boolean),
    Column("note", String(50)),
)
INSERT = insert(rows)
SET_NOTE = update(rows).where(rows.c.code == bindparam("where_code"))


@contextmanager
def database_with_rows(url: str) -> Iterator[Database]:
    """A Database on ``url`` (empty) with the table of these tests."""
    database = Database(url)
    metadata.create_all(database.engine)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def db(postgres_or_sqlite_empty_url: str) -> Iterator[Database]:
    with database_with_rows(postgres_or_sqlite_empty_url) as database:
        yield database


def _row(code: str, note: str | None = "ж'\"; --") -> dict[str, object]:
    return {
        "code": code,
        "amount": Decimal("1234.50"),
        "at": datetime(2026, 11, 30, 10, 15, 30, 123456, tzinfo=UTC),
        "flag": True,
        "note": note,
    }


def _stored(db: Database, code: str) -> tuple[object, ...]:
    """The row as the driver returns it, below SQLAlchemy's result processing."""
    with db.read() as session:
        row = session.execute(
            text("SELECT code, amount, at, flag, note FROM direct_rows WHERE code = :c"),
            {"c": code},
        ).one()
    return tuple(row)


def test_an_insert_stores_what_sqlalchemy_stores(db: Database) -> None:
    direct = Direct(INSERT)
    with db.write() as session:
        session.execute(INSERT, _row("by-sqlalchemy"))
        direct.execute(session, _row("by-direct"))
        direct.execute(session, _row("none", note=None))
    assert _stored(db, "by-direct")[1:] == _stored(db, "by-sqlalchemy")[1:]
    with db.read() as session:
        loaded = session.execute(select(rows).where(rows.c.code == "by-direct")).one()
        assert loaded.amount == Decimal("1234.50")  # minor units both ways
        assert loaded.at == datetime(2026, 11, 30, 10, 15, 30, 123456, tzinfo=UTC)
        assert loaded.note == "ж'\"; --"
        assert session.execute(select(rows.c.note).where(rows.c.code == "none")).scalar() is None


def test_an_update_answers_how_many_rows_it_changed(db: Database) -> None:
    direct = Direct(SET_NOTE)
    with db.write() as session:
        Direct(INSERT).execute(session, _row("a"))
        assert direct.execute(session, {"note": "changed", "where_code": "a"}) == 1
        assert direct.execute(session, {"note": "changed", "where_code": "nobody"}) == 0
    assert _stored(db, "a")[4] == "changed"


def test_a_broken_constraint_is_sqlalchemys_integrity_error_without_values(
    db: Database,
) -> None:
    direct = Direct(INSERT)
    with db.write() as session:
        direct.execute(session, _row("same"))
    with pytest.raises(IntegrityError) as raised, db.write() as session:
        direct.execute(session, _row("same", note="secret-value"))
    assert "secret-value" not in str(raised.value)
    # The failed write rolled back; the first row stands alone.
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM direct_rows")).scalar() == 1


def test_it_runs_in_the_sessions_transaction(db: Database) -> None:
    direct = Direct(INSERT)
    with pytest.raises(RuntimeError), db.write() as session:
        direct.execute(session, _row("rolled-back"))
        raise RuntimeError("the caller fails after the write")
    with db.read() as session:
        assert session.execute(text("SELECT count(*) FROM direct_rows")).scalar() == 0


def test_a_missing_value_is_refused_before_anything_runs(db: Database) -> None:
    with pytest.raises(ValueError, match="where_code"), db.write() as session:
        Direct(SET_NOTE).execute(session, {"note": "x"})
