"""Engines (infra.db.session): a pooled connection that died while idle is replaced before use, one
in steady use costs no ping, and read sessions run in autocommit (no transaction left open)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from infra.db import session as db_session
from infra.db.session import make_engine, make_read_session_factory, make_session_factory


@pytest.fixture
def engine(committed_db: str) -> Iterator[Engine]:
    engine = make_engine(committed_db, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_killed_while_idle_is_replaced_before_use(
    engine: Engine, committed_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.05)
    first = _backend_pid(engine)
    other = make_engine(committed_db)
    with other.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
    other.dispose()
    time.sleep(0.1)
    # The only pooled connection is dead; the checkout ping notices and the pool opens a new one.
    assert _backend_pid(engine) != first


def test_only_a_connection_idle_for_a_while_is_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    real_ping = db_session._ping
    monkeypatch.setattr(db_session, "_ping", lambda conn: (pings.append(conn), real_ping(conn)))
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.2)
    _backend_pid(engine)  # opened now: not pinged
    _backend_pid(engine)  # returned just now: not pinged
    assert pings == []
    time.sleep(0.3)
    _backend_pid(engine)
    assert len(pings) == 1


def test_read_sessions_run_in_autocommit(engine: Engine) -> None:
    reads = make_read_session_factory(engine)
    with reads() as session:
        session.execute(text("SELECT 1"))
        status = session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        assert status.name == "IDLE"  # no transaction opened by the read
    writes = make_session_factory(engine)
    with writes() as session:
        session.execute(text("SELECT 1"))
        status = session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        assert status.name == "INTRANS"
    # The pool hands the same connection back to writers out of autocommit.
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
