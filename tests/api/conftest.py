"""API test fixtures: one migrated PostgreSQL database per session, a rolled-back transaction per
test, real Redis as the broker (messages land in a per-session key prefix)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth.service import create_api_key
from api.deps import get_read_session_factory, get_session_factory
from infra.db.session import make_engine
from infra.settings import Settings
from tests.helpers import services


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with services.fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def broker_prefix() -> Iterator[str]:
    services.require_redis()
    prefix = services.broker_prefix()
    yield prefix
    services.delete_redis_prefix(prefix)


@pytest.fixture
def settings(pg_url: str, broker_prefix: str, tmp_path: Path) -> Settings:
    roots = tmp_path / "roots"
    roots.mkdir()
    return Settings(
        env="test",
        home=tmp_path / "home",
        database_url=pg_url,
        broker_url=services.REDIS_URL,
        broker_key_prefix=broker_prefix,
        data_roots=[roots],
        max_upload_bytes=2 * 1024 * 1024,
        max_image_pixels=100_000,
    )


@pytest.fixture
def connection(pg_engine: Engine) -> Iterator[Connection]:
    conn = pg_engine.connect()
    outer = conn.begin()
    yield conn
    outer.rollback()
    conn.close()


@pytest.fixture
def session_factory(connection: Connection) -> sessionmaker[Session]:
    # The request's commit only releases a savepoint; the test's outer transaction is rolled back.
    return sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    application = create_app(settings)
    application.dependency_overrides[get_session_factory] = lambda: session_factory
    application.dependency_overrides[get_read_session_factory] = lambda: session_factory
    return application


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@dataclass(frozen=True)
class KeyFor:
    key: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _make_key(factory: sessionmaker[Session], user: str, admin: bool = False) -> KeyFor:
    with factory.begin() as session:
        row, key = create_api_key(session, user_name=user, key_name=f"{user} key", admin=admin)
    return KeyFor(key=key, user_id=row.user_id)


@pytest.fixture
def alice(session_factory: sessionmaker[Session]) -> KeyFor:
    return _make_key(session_factory, "alice")


@pytest.fixture
def bob(session_factory: sessionmaker[Session]) -> KeyFor:
    return _make_key(session_factory, "bob")


@pytest.fixture
def admin(session_factory: sessionmaker[Session]) -> KeyFor:
    return _make_key(session_factory, "root", admin=True)


@pytest.fixture
def data_root(settings: Settings) -> Path:
    return settings.resolved_data_roots[0]
