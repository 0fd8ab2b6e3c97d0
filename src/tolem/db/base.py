"""Declarative base and the column types every domain shares."""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import BigInteger, DateTime, MetaData, String, inspect, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Money(TypeDecorator[Decimal]):
    """A two-decimal amount kept as integer minor units (tiyn, cents).

    Integers are exact on every engine; SQLite has no decimal type of its own.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        minor = value * 100
        if minor != minor.to_integral_value():
            raise ValueError(f"amount {value} has more than two decimals")
        return int(minor)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return (Decimal(int(value)) / 100).quantize(Decimal("0.01"))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def uuid_column_type() -> String:
    return String(36)


@functools.cache
def _column_defaults(cls: type[DeclarativeBase]) -> tuple[tuple[str, str, Any, bool], ...]:
    """(attribute, column, column default, filled by the database) for each column."""
    out = []
    for prop in inspect(cls).column_attrs:
        column = prop.columns[0]
        # An autoincrement key, or a column with only a server default: the database
        # fills it (the object does not learn the value).
        by_database = (column.primary_key and column.autoincrement is True) or (
            column.default is None and column.server_default is not None
        )
        out.append((prop.key, column.key, column.default, by_database))
    return tuple(out)


def _row(
    cls: type[DeclarativeBase], given: Mapping[str, Any]
) -> Iterator[tuple[str, str, Any, bool]]:
    """(attribute, column, value, given) of each column an insert of ``cls`` writes: the
    value given, else the column's Python-side default. Left out: an autoincrement key,
    a column with only a server default, a SQL default (the database fills them)."""
    for key, column_key, default, by_database in _column_defaults(cls):
        if key in given:
            yield key, column_key, given[key], True
        elif by_database:
            continue
        elif default is None:
            yield key, column_key, None, False
        elif default.is_scalar:
            yield key, column_key, default.arg, False
        elif default.is_callable:
            yield key, column_key, default.arg(None), False


def insert_row(obj: DeclarativeBase) -> dict[str, Any]:
    """The row that inserting ``obj`` writes, for a Core ``insert()`` of its table.

    Columns left unset get their Python-side defaults, on ``obj`` too, so that ``obj``
    reads as the stored row would (an autoincrement key, or a column with only a server
    default, is left to the database). Core inserts skip the ORM's unit of work, which
    costs more than the statement itself on the payment path.
    """
    row: dict[str, Any] = {}
    for key, column_key, value, given in _row(type(obj), obj.__dict__):
        if not given:
            setattr(obj, key, value)
        row[column_key] = value
    return row


_M = TypeVar("_M", bound=DeclarativeBase)


@functools.cache
def _attribute_keys(cls: type[DeclarativeBase]) -> frozenset[str]:
    return frozenset(key for key, *_ in _column_defaults(cls))


def new_row(cls: type[_M], **values: Any) -> tuple[_M, dict[str, Any]]:
    """A new ``cls`` holding ``values``, and the row that inserting it writes.

    What ``insert_row(cls(**values))`` gives, for a third of its CPU: the object is made
    without running the ORM's attribute events (it is in no session, and its row goes in
    with a Core insert, so there is nothing for them to record). Columns not given get
    their Python-side defaults, on the object too.
    """
    unknown = values.keys() - _attribute_keys(cls)
    if unknown:
        raise TypeError(f"{cls.__name__} has no column attribute {sorted(unknown)[0]!r}")
    obj = cls.__mapper__.class_manager.new_instance()
    state = obj.__dict__
    row: dict[str, Any] = {}
    for key, column_key, value, _given in _row(cls, values):
        state[key] = value
        row[column_key] = value
    return obj, row


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def advisory_lock_key(*parts: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock number for a key made of ``parts`` (a
    collision only makes two unrelated transactions wait for each other)."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8, person=b"tolem-lock")
    return int.from_bytes(digest.digest(), "big", signed=True)


def lock_until_commit(session: Session, *keys: int) -> None:
    """PostgreSQL: wait for, then hold until commit, the advisory locks ``keys`` (taken in
    ascending order, so that two transactions taking some of the same cannot deadlock).
    Other databases write one transaction at a time: nothing to do."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for key in sorted(set(keys)):
        session.execute(_ADVISORY_LOCK, {"key": key})
