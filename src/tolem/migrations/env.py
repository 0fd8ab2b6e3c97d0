"""Alembic environment: runs on the connection tolem hands it."""

from alembic import context
from sqlalchemy import Connection

from tolem.db.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with config.attributes["engine"].connect() as conn:
        run(conn)
        conn.commit()
