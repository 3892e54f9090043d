"""Engines and session factories, built on first use and cached per URL (never at import time)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from pydantic_core import from_json
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the worker writes; busy_timeout waits instead of failing on a lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# A pooled connection unused for longer than this is pinged before it is handed out (a restarted
# server leaves the pool full of dead ones). A connection in steady use is not: the ping is a round
# trip, and under load it was one of the four a one-row read paid (ping, BEGIN, SELECT, ROLLBACK).
# One that died within the window fails its statement once; the dialect then invalidates the whole
# pool, and callers that retry (infra.db.outage, the API's 503 + Retry-After) get fresh connections.
PING_AFTER_IDLE_S = 1.0
_RETURNED_AT = "mbpo_returned_at"


def _record_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
    returned_at = record.info.get(_RETURNED_AT)
    if returned_at is None or time.monotonic() - returned_at < PING_AFTER_IDLE_S:
        return  # new (just connected) or in steady use
    try:
        _ping(dbapi_connection)
    except Exception as error:
        # The pool discards this connection and checks out (or opens) another.
        raise exc.DisconnectionError(str(error)) from error


def _ping(dbapi_connection: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    if not dbapi_connection.autocommit:
        dbapi_connection.rollback()


DEFAULT_POOL_SIZE = 20
DEFAULT_MAX_OVERFLOW = 10


def make_engine(
    url: str, *, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW
) -> Engine:
    # JSON columns are parsed by pydantic's parser (the same values as json.loads, about twice as
    # fast): a page of datasets parses two documents a row.
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=max_overflow,
            json_deserializer=from_json,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, json_deserializer=from_json)
    event.listen(engine, "checkin", _record_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


@lru_cache(maxsize=8)
def get_engine(
    url: str, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW
) -> Engine:
    return make_engine(url, pool_size=pool_size, max_overflow=max_overflow)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after the commit (responses, enqueued ids).
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for read-only work: each statement runs in autocommit, so a read costs its queries'
    round trips and nothing else (no BEGIN, no ROLLBACK when the session closes). Each statement
    sees its own snapshot, as under the default READ COMMITTED; nothing written through such a
    session is ever committed as a unit, so never write with one."""
    return sessionmaker(
        bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False, autoflush=False
    )


@lru_cache(maxsize=8)
def get_session_factory(
    url: str, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW
) -> sessionmaker[Session]:
    return make_session_factory(get_engine(url, pool_size, max_overflow))
