"""Fixtures every test package may use.

`committed_db`: a fresh, migrated PostgreSQL database per test module whose data is committed (a
worker process or a second connection must see it); `pg_factory`: sessions on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from infra.db.session import make_engine, make_session_factory
from tests.helpers import services


@pytest.fixture(scope="module")
def committed_db() -> Iterator[str]:
    with services.fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def pg_factory(committed_db: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(committed_db)
    yield make_session_factory(engine)
    engine.dispose()
