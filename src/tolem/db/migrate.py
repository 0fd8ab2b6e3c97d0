"""Alembic, driven from code: ``tolem db upgrade`` and the start of ``tolem serve``."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config

from tolem.db.engine import Database

log = logging.getLogger("tolem.db")

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = db.engine
    return config


def upgrade(db: Database, revision: str = "head") -> None:
    # A write transaction (BEGIN IMMEDIATE on SQLite): one migrator at a time, even
    # when several processes start together.
    with db.engine.connect().execution_options(tolem_write=True) as connection, connection.begin():
        config = alembic_config(db)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def prepare_database(db: Database, *, sandbox: bool) -> None:
    """Bring the schema to head and, in sandbox mode, seed the test merchant."""
    from tolem.merchants.service import seed_sandbox

    upgrade(db)
    if sandbox:
        with db.write() as session:
            if seed_sandbox(session):
                log.info("seeded ePay's public test merchant (ClientID 'test')")
