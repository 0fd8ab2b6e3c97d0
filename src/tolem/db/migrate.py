"""Alembic, driven from code: ``tolem db upgrade`` and the start of ``tolem serve``."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from tolem.db.engine import Database

log = logging.getLogger("tolem.db")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

# Any constant: the PostgreSQL advisory lock that serialises migrators and seeders.
SCHEMA_LOCK = 0x746F6C656D  # "tolem"


def serialise(connection: Connection) -> None:
    """Hold the schema lock until this transaction ends.

    Several gateway processes may start at once: on SQLite the write transaction
    (BEGIN IMMEDIATE) already queues them; PostgreSQL needs an advisory lock.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = db.engine
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    # A write transaction (BEGIN IMMEDIATE on SQLite): one migrator at a time, even
    # when several processes start together.
    with db.engine.connect().execution_options(tolem_write=True) as connection, connection.begin():
        serialise(connection)
        config = alembic_config(db)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def prepare_database(db: Database, *, sandbox: bool) -> None:
    """Bring the schema to head and, in sandbox mode, seed the test merchant.

    Production mode seeds nothing, and refuses a database that holds the sandbox's
    published credentials (:class:`tolem.production.ProductionError`).
    """
    from tolem.cabinet.users import SANDBOX_EMAIL, seed_sandbox_user
    from tolem.merchants.service import seed_sandbox
    from tolem.production import check_database

    upgrade(db)
    if not sandbox:
        with db.read() as session:
            check_database(session)
        return
    with db.write() as session:
        serialise(session.connection())
        if seed_sandbox(session):
            log.info("seeded ePay's public test merchant (ClientID 'test')")
        if seed_sandbox_user(session):
            log.info("seeded ePay's sandbox cabinet login (%s)", SANDBOX_EMAIL)
