"""The merchant directory: tokens and payments read merchants and terminals a second old.

A change made in the same process is seen at once; one made elsewhere (another worker,
the CLI, an operator's UPDATE) within the directory's time to live.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from tolem.db.engine import Database, Directory
from tolem.db.migrate import prepare_database
from tolem.merchants import service as merchants
from tolem.merchants.models import Merchant, Terminal

from .support import Gateway


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 't.db'}")
    prepare_database(database, sandbox=True)
    return database


def _two_step(db: Database, directory: Directory) -> bool | None:
    with db.read() as session:
        terminal = directory.load(
            ("terminal", merchants.SANDBOX_TERMINAL_ID),
            session,
            lambda: session.get(Terminal, merchants.SANDBOX_TERMINAL_ID),
        )
    return None if terminal is None else terminal.two_step


def _set_two_step(db: Database, value: bool) -> None:
    with db.write() as session:
        session.execute(
            update(Terminal)
            .where(Terminal.id == merchants.SANDBOX_TERMINAL_ID)
            .values(two_step=value)
        )


def test_an_entry_is_read_once_then_kept_until_its_time_runs_out(db: Database) -> None:
    directory = Directory(ttl=0.3)
    before = _two_step(db, directory)
    assert before is not None
    _set_two_step(db, not before)
    assert _two_step(db, directory) == before  # kept: no query
    time.sleep(0.35)
    assert _two_step(db, directory) == (not before)  # read again
    _set_two_step(db, before)
    directory.forget()
    assert _two_step(db, directory) == before  # forgotten: read at once


def test_absent_entries_are_kept_too_and_the_size_is_bounded(db: Database) -> None:
    directory = Directory(ttl=60, size=3)
    calls: list[str] = []

    def missing(key: str) -> None:
        calls.append(key)

    with db.read() as session:
        for key in ("a", "b", "a", "b"):
            assert directory.load(("x", key), session, lambda key=key: missing(key)) is None
        assert calls == ["a", "b"]  # an unknown id answers from the directory too
        assert directory.get(("x", "a")) == (True, None)
        for key in ("c", "d"):  # the fourth entry empties the full directory
            directory.load(("x", key), session, lambda key=key: missing(key))
    assert directory.get(("x", "a")) == (False, None)
    assert directory.get(("x", "d")) == (True, None)


def test_kept_entries_belong_to_no_session(db: Database) -> None:
    directory = Directory()
    with db.write() as session:
        merchant, terminal = directory.load(
            ("client", "test"),
            session,
            lambda: merchants._by_client(session, "test", merchants.SANDBOX_TERMINAL_ID),
        )
        assert merchant is not None and terminal is not None
        assert merchant not in session and terminal not in session
        # A write in the same session does not touch (or expire) what is kept.
        session.execute(update(Merchant).where(Merchant.id == merchant.id).values(name="x"))
    assert merchant.name == merchants.SANDBOX_MERCHANT_NAME


def test_only_the_directory_is_asked_without_a_session() -> None:
    with pytest.raises(merchants.NotKept):
        merchants.known_credentials(None, "nobody-asked-yet", "secret", "", directory=Directory())


def test_each_database_has_its_own_directory(tmp_path: Path) -> None:
    """Two gateways in one process (tests, the pytest plugin): each reads its own
    sandbox merchant, though both have the client id "test"."""
    first = Database(f"sqlite:///{tmp_path / 'a.db'}")
    second = Database(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        found = []
        for db in (first, second):
            prepare_database(db, sandbox=True)
            with db.read() as session:
                assert merchants.directory_of(session) is db.directory
                merchant, _ = merchants.known_credentials(
                    session,
                    "test",
                    merchants.SANDBOX_CLIENT_SECRET,
                    "",
                    directory=db.directory,
                )
                assert merchant is not None
                found.append(merchant.id)
        assert found[0] != found[1]
    finally:
        first.dispose()
        second.dispose()


def test_a_session_of_no_database_keeps_nothing(db: Database) -> None:
    with Session(db.engine) as session:
        directory = merchants.directory_of(session)
        assert directory is not db.directory
        merchants.kept_terminal(session, "nobody", merchants.SANDBOX_TERMINAL_ID)
        assert directory.get(("terminal", "nobody", merchants.SANDBOX_TERMINAL_ID))[0] is False


def _token(client: httpx.Client, client_id: str, secret: str) -> int:
    return client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "payment",
        },
    ).status_code


def test_a_secret_changed_by_another_process_stops_working_within_a_second(
    gateway: Gateway,
) -> None:
    db = Database(gateway.database_url)
    try:
        with db.write() as session:
            made = merchants.create_merchant(session, "Directory shop")
        with gateway.client() as client:
            assert _token(client, made.client_id, made.client_secret) == 200
            # Another process (this test) rotates the secret straight in the database.
            salt = "11" * 16
            with db.write() as session:
                session.execute(
                    update(Merchant)
                    .where(Merchant.id == made.merchant_id)
                    .values(secret_salt=salt, secret_digest=merchants.digest_secret(salt, "new"))
                )
            time.sleep(Directory().ttl + 0.2)
            assert _token(client, made.client_id, made.client_secret) == 401
            assert _token(client, made.client_id, "new") == 200
    finally:
        db.dispose()
