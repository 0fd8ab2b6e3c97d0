"""Cabinet users (issue 8, first part): passwords, lockout, the sandbox user, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from tolem import sandbox
from tolem.cabinet.models import CabinetSession, CabinetUser
from tolem.cabinet.passwords import (
    PasswordError,
    hash_password,
    needs_rehash,
    verify_password,
)
from tolem.cabinet.sessions import (
    IDLE_TIMEOUT,
    SESSION_LIFETIME,
    look_up,
    settle,
    start_session,
)
from tolem.cabinet.users import (
    LOCK_TIME,
    MAX_FAILED_LOGINS,
    SANDBOX_EMAIL,
    SANDBOX_PASSWORD,
    LoginResult,
    UserError,
    create_user,
    find_user,
    log_in,
    unlock,
)
from tolem.db.base import utcnow
from tolem.db.engine import Database
from tolem.db.migrate import prepare_database
from tolem.merchants.service import create_merchant


@pytest.fixture
def db(postgres_or_sqlite_empty_url: str) -> Iterator[Database]:
    database = Database(postgres_or_sqlite_empty_url)
    prepare_database(database, sandbox=True)
    yield database
    database.dispose()


def test_a_hash_is_scrypt_with_its_parameters_and_a_fresh_salt() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("scrypt$15$8$1$") and first != second
    assert "correct horse" not in first
    assert verify_password(first, "correct horse")
    assert not verify_password(first, "correct horsE")
    assert not verify_password(None, "correct horse")
    assert not verify_password("md5$abc", "correct horse")
    assert not needs_rehash(first)
    assert needs_rehash("scrypt$14$8$1$AAAA$AAAA")


@pytest.mark.parametrize("password", ["short", " leading space", "trailing ", "x" * 1025])
def test_the_policy_refuses_and_does_not_repeat_the_password(password: str) -> None:
    with pytest.raises(PasswordError) as error:
        hash_password(password)
    assert password not in str(error.value)


def test_the_documents_sandbox_login_is_seeded(db: Database) -> None:
    with db.write() as session:
        assert log_in(session, SANDBOX_EMAIL, SANDBOX_PASSWORD).result is LoginResult.OK
        assert log_in(session, "EPAY@halykbank.kz ", SANDBOX_PASSWORD).result is LoginResult.OK
    prepare_database(db, sandbox=True)  # a restart seeds nothing twice
    with db.read() as session:
        assert session.query(CabinetUser).count() == 1


def test_three_wrong_passwords_lock_even_the_right_one_out(db: Database) -> None:
    now = utcnow()
    with db.write() as session:
        for _ in range(2):
            assert log_in(session, SANDBOX_EMAIL, "wrong-pass", now).result is LoginResult.WRONG
        third = log_in(session, SANDBOX_EMAIL, "wrong-pass", now)
        assert third.result is LoginResult.LOCKED and third.locked_until == now + LOCK_TIME
        assert log_in(session, SANDBOX_EMAIL, SANDBOX_PASSWORD, now).result is LoginResult.LOCKED
        later = now + LOCK_TIME + timedelta(seconds=1)
        assert log_in(session, SANDBOX_EMAIL, SANDBOX_PASSWORD, later).result is LoginResult.OK
        user = find_user(session, SANDBOX_EMAIL)
        assert user is not None and (user.failed_logins, user.locked_until) == (0, None)


def test_a_right_password_resets_the_count(db: Database) -> None:
    with db.write() as session:
        log_in(session, SANDBOX_EMAIL, "wrong-pass")
        log_in(session, SANDBOX_EMAIL, "wrong-pass")
        assert log_in(session, SANDBOX_EMAIL, SANDBOX_PASSWORD).result is LoginResult.OK
        assert log_in(session, SANDBOX_EMAIL, "wrong-pass").result is LoginResult.WRONG


def test_concurrent_wrong_passwords_are_checked_one_at_a_time(db: Database) -> None:
    """Attempts at once: each one is checked and counted, or answered as wrong without a
    check while another holds the account; a burst never gets more than three checks,
    and three checked wrong ones lock it."""
    results: list[LoginResult] = []

    def attempt() -> None:
        with db.write() as session:
            results.append(log_in(session, SANDBOX_EMAIL, "wrong-pass").result)

    threads = [threading.Thread(target=attempt) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) <= {LoginResult.WRONG, LoginResult.LOCKED} and len(results) == 10
    with db.read() as session:
        user = find_user(session, SANDBOX_EMAIL)
        assert user is not None and 1 <= user.failed_logins <= MAX_FAILED_LOGINS
        counted = user.failed_logins
    for _ in range(MAX_FAILED_LOGINS - counted):
        with db.write() as session:
            log_in(session, SANDBOX_EMAIL, "wrong-pass")
    with db.read() as session:
        user = find_user(session, SANDBOX_EMAIL)
        assert user is not None and user.failed_logins == MAX_FAILED_LOGINS
        assert user.locked_until is not None


def test_unknown_email_and_wrong_password_get_one_answer(db: Database) -> None:
    with db.write() as session:
        assert log_in(session, "nobody@example.kz", "whatever1").result is LoginResult.WRONG
        assert log_in(session, SANDBOX_EMAIL, "whatever1").result is LoginResult.WRONG
        assert log_in(session, "not an email", "whatever1").result is LoginResult.WRONG


def test_users_belong_to_a_merchant_and_emails_are_unique(db: Database) -> None:
    with db.write() as session:
        other = create_merchant(session, "Other shop")
        user = create_user(session, other.client_id, " Anna@Shop.KZ ", "long enough")
        assert (user.email, user.merchant_id) == ("anna@shop.kz", other.merchant_id)
        with pytest.raises(UserError, match="already has an account"):
            create_user(session, other.client_id, "anna@shop.kz", "long enough")
    with db.write() as session:
        with pytest.raises(UserError, match="no merchant"):
            create_user(session, "nope", "b@shop.kz", "long enough")
        with pytest.raises(UserError, match="email"):
            create_user(session, other.client_id, "no-at-sign", "long enough")


def test_unlock(db: Database) -> None:
    with db.write() as session:
        for _ in range(3):
            log_in(session, SANDBOX_EMAIL, "wrong-pass")
        assert unlock(session, SANDBOX_EMAIL) and not unlock(session, "x@y.kz")
        assert log_in(session, SANDBOX_EMAIL, SANDBOX_PASSWORD).result is LoginResult.OK


def _tolem(*args: str, stdin: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tolem", *args, "--database-url", database_url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_cli_creates_lists_and_unlocks_users(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    database = Database(url)
    prepare_database(database, sandbox=True)
    database.dispose()
    created = _tolem(
        "user", "create", "--email", "Ops@Shop.kz", "--merchant", "test",
        stdin="s3cret-pass-1\n", database_url=url,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "ops@shop.kz" in created.stdout and "s3cret-pass-1" not in created.stdout
    listed = _tolem("user", "list", "--json", stdin="", database_url=url)
    assert {row["email"] for row in json.loads(listed.stdout)} == {
        "ops@shop.kz",
        SANDBOX_EMAIL,
    }
    short = _tolem(
        "user", "create", "--email", "b@shop.kz", "--merchant", "test",
        stdin="short\n", database_url=url,
    )  # fmt: skip
    assert short.returncode == 2 and "at least 8" in short.stdout + short.stderr
    assert "short" not in (short.stdout + short.stderr).replace("at least", "")
    missing = _tolem("user", "unlock", "nobody@shop.kz", stdin="", database_url=url)
    assert missing.returncode == 1
    database = Database(url)
    with database.write() as session:
        for _ in range(3):
            log_in(session, "ops@shop.kz", "wrong-pass")
    database.dispose()
    assert _tolem("user", "unlock", "ops@shop.kz", stdin="", database_url=url).returncode == 0
    database = Database(url)
    with database.write() as session:
        assert log_in(session, "ops@shop.kz", "s3cret-pass-1").result is LoginResult.OK
    database.dispose()
    assert b"s3cret-pass-1" not in (tmp_path / "cli.db").read_bytes()


def test_sessions_are_looked_up_read_only_and_swept_at_logins(db: Database) -> None:
    """A page view reads its session and writes only when it ended (deleted) or is due a
    visit; every login deletes everyone's sessions past their end."""
    now = utcnow()
    with db.write() as session:
        user = find_user(session, SANDBOX_EMAIL)
        assert user is not None
        token, _ = start_session(session, user, now=now)
        someone = create_user(session, sandbox.CLIENT_ID, "sweep@shop.kz", "right-pass-1")
        old_token, _ = start_session(session, someone, now=now - SESSION_LIFETIME)
    with db.read() as session:
        fresh = look_up(session, token, now + timedelta(seconds=5))
        assert fresh is not None and not fresh.ended and not fresh.stale
        due = look_up(session, token, now + timedelta(seconds=31))
        assert due is not None and due.stale and not due.ended
        ended = look_up(session, token, now + IDLE_TIMEOUT)
        assert ended is not None and ended.ended and ended.user is None
    with db.write() as session:  # a visit 31 s later is recorded
        later = now + timedelta(seconds=31)
        visit = look_up(session, token, later)
        assert visit is not None and not visit.ended and visit.user is not None
        settle(session, visit, later)
    with db.read() as session:
        rows = {r.id: r for r in session.scalars(select(CabinetSession))}
        assert len(rows) == 2  # the old one waits for the next login
        stored = [r for r in rows.values() if r.expires_at > now]
        assert [r.last_seen_at for r in stored] == [now + timedelta(seconds=31)]
    with db.write() as session:
        user = find_user(session, SANDBOX_EMAIL)
        assert user is not None
        start_session(session, user, now=now + timedelta(seconds=40))
    with db.read() as session:
        assert look_up(session, old_token, now) is None  # another user's, swept
        assert session.query(CabinetSession).count() == 2


def test_an_unknown_email_costs_a_password_check(db: Database) -> None:
    """No timing oracle: an unknown email spends the scrypt a wrong password does (the
    difference without it is 1 ms against hundreds)."""
    import time

    def timed(email: str) -> float:
        with db.write() as session:
            started = time.perf_counter()
            assert log_in(session, email, "not-the-password").result is LoginResult.WRONG
            return time.perf_counter() - started

    timed("nobody@shop.kz")  # warm up
    unknown = min(timed("nobody@shop.kz") for _ in range(2))
    wrong = min(timed(SANDBOX_EMAIL) for _ in range(2))
    assert unknown > wrong / 3, (unknown, wrong)
