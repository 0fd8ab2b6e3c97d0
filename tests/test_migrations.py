"""The schema that migrations build equals the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tolem.db.engine import Database
from tolem.db.migrate import upgrade
from tolem.db.models import Base


# SQLite cannot reflect expression indexes (the card filter's, migration 0009), so
# those two are compared on PostgreSQL only; SQLAlchemy and alembic say so in a warning.
@pytest.mark.filterwarnings(
    "ignore:Skipped unsupported reflection of expression-based index ix_transactions_merchant_card",
    "ignore:autogenerate skipping metadata-specified expression-based index "
    "'ix_transactions_merchant_card",
)
def test_migrations_match_models(postgres_or_sqlite_empty_url: str) -> None:
    db = Database(postgres_or_sqlite_empty_url)
    try:
        upgrade(db)
        upgrade(db)  # a second upgrade is a no-op
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        db.dispose()
    assert diff == [], diff
    assert version is not None
