"""Shared fixtures: a real ``tolem serve`` per database backend, and ePay client helpers.

Every test that takes ``gateway`` runs once on SQLite and once on PostgreSQL. PostgreSQL
comes from ``TOLEM_TEST_POSTGRES_URL`` (default: the local server, database ``test``);
each run creates its own database and drops it afterwards. When PostgreSQL cannot be
reached, its tests are skipped with the reason shown, unless ``TOLEM_REQUIRE_POSTGRES=1``
(set by ./dev test and CI), which turns that into an error.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import Gateway, start_gateway

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_admin_url() -> str:
    return os.environ.get("TOLEM_TEST_POSTGRES_URL", DEFAULT_PG)


def _postgres_reachable() -> str | None:
    try:
        engine = sa.create_engine(postgres_admin_url(), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL unreachable at {postgres_admin_url()}: {type(exc).__name__}"
    return None


@contextmanager
def fresh_postgres(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    problem = _postgres_reachable()
    if problem:
        if os.environ.get("TOLEM_REQUIRE_POSTGRES") == "1":
            pytest.fail(problem + " (TOLEM_REQUIRE_POSTGRES=1)")
        pytest.skip(problem)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(postgres_admin_url()).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session."""
    with fresh_postgres("tolem_test") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    if backend == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tolem.db'}"


@pytest.fixture(scope="session")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A running ``tolem serve`` (sandbox mode) on a free port of 127.0.0.1."""
    data_dir: Path = tmp_path_factory.mktemp("gateway")
    with start_gateway(data_dir, database_url) as gw:
        yield gw


@pytest.fixture(params=["sqlite", "postgresql"])
def postgres_or_sqlite_empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, not shared with any gateway."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with fresh_postgres("tolem_empty") as url:
        yield url
