"""Declarative base with a constraint naming convention, portable column types and id generation."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names make Alembic migrations reproducible and `alembic check` meaningful.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere (SQLite).
JSONType = JSON().with_variant(JSONB(), "postgresql")


# The largest values of a BIGINT and an INTEGER column: a bigger integer in a query overflows the
# driver (a 500), so every integer a client sends is bounded first by its column's: INT32_MAX for
# seqs and steps (INTEGER columns), INT64_MAX for seeds.
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


_id_lock = threading.Lock()
_last_id = [0, 0]  # (millis, random part) of this process's newest id


def new_id(prefix: str) -> str:
    """`<prefix>_<26 hex>`: 48-bit millisecond time then 56 bits, random for a new millisecond and
    incremented for further ids of the same millisecond (so ids from one process never tie or
    reorder, however fast they are made).

    Ids sort by creation time, so "newest first" and cursor pagination are an index scan on the
    primary key, and the prefix says what an id names when it shows up in a log or a URL."""
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    with _id_lock:
        last_millis, last_rand = _last_id
        if millis <= last_millis and last_rand + 1 < 1 << 56:
            millis, rand = last_millis, last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(7)) >> 1  # top bit clear: room to increment
        _last_id[:] = [millis, rand]
    return f"{prefix}_{millis:012x}{rand:014x}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
