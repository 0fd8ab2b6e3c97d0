"""Core statements run on the driver's cursor: the payment path's writes.

``session.execute(insert(table), row)`` costs 25-35 µs of CPU in SQLAlchemy before and
after the 5 µs the database needs (a cache key, an execution context, a result object,
the ORM session's bookkeeping). A payment writes five to seven rows in the one
transaction of a test terminal, so that was a sixth of its CPU (BENCHMARKS.md, "Fourth
round"). :class:`Direct` compiles its statement once per dialect and per set of
parameter names with SQLAlchemy's own compiler, keeps the type processors the compiled
statement would apply (Money to minor units, UTCDateTime as the dialect stores it), and
then hands each execution's values straight to the DB-API cursor of the session's
connection, inside the session's transaction.

What it gives up: SQLAlchemy's cursor-execute events (tolem listens to none) and its
statement log. A failure raises SQLAlchemy's own exceptions (``IntegrityError`` and the
rest), with the parameters left out as ``hide_parameters`` leaves them out elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase

_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Prepared:
    sql: str
    names: tuple[str, ...]  # the parameters, in the statement's order
    processors: tuple[_Processor, ...]
    positional: bool  # sqlite3's "?" placeholders, or psycopg's "%(name)s"


class Direct:
    """An INSERT or UPDATE executed with the driver's cursor (see the module's text).

    Callers pass the same parameter names in the same order each time (a row built by
    :func:`tolem.db.base.insert_row`, a dict literal): each new order is compiled once.
    """

    def __init__(self, statement: UpdateBase) -> None:
        self.statement = statement
        self._prepared: dict[tuple[str, tuple[str, ...]], _Prepared] = {}

    def execute(self, session: Session, params: Mapping[str, Any]) -> int:
        """Run in ``session``'s transaction; the number of rows it changed."""
        connection = session.connection()
        dialect = connection.dialect
        key = (dialect.name, tuple(params))
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepared[key] = self._prepare(dialect, key[1])
        values = [
            params[name] if process is None else process(params[name])
            for name, process in zip(prepared.names, prepared.processors, strict=True)
        ]
        # The DB-API connection: psycopg's own, or on the event loop SQLAlchemy's
        # adapter of its asynchronous one (tolem.db.engine.Database.transact_on_the_loop).
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            if prepared.positional:
                cursor.execute(prepared.sql, values)
            else:
                cursor.execute(prepared.sql, dict(zip(prepared.names, values, strict=True)))
            return int(cursor.rowcount)
        except dialect.loaded_dbapi.Error as exc:
            # As SQLAlchemy raises it (IntegrityError, OperationalError, ...), values hidden.
            raise DBAPIError.instance(
                prepared.sql,
                None,
                exc,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()

    def _prepare(self, dialect: Dialect, names: tuple[str, ...]) -> _Prepared:
        compiled = self.statement.compile(dialect=dialect, column_keys=list(names))
        # sqlite3 takes the values in the statement's order, psycopg by name.
        order = tuple(compiled.positiontup or ()) if dialect.positional else tuple(compiled.binds)
        missing = [name for name in order if name not in names]
        if missing:  # a bound value the caller did not give: not for this class
            raise ValueError(f"parameters missing for {self.statement}: {missing}")
        processors = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in order
        )
        return _Prepared(compiled.string, order, processors, dialect.positional)
