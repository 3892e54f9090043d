"""Admission control: more concurrent requests than pooled connections neither fail nor stall
(without the slots, threads blocked on the pool starve the sessions that hold connections until
the pool times out)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.auth.service import create_api_key
from infra.db.session import make_engine, make_session_factory
from infra.settings import Settings
from tests.helpers import services


def _serve(app: object) -> Iterator[str]:
    port = services.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    services.wait_for(lambda: server.started, timeout=10, what="uvicorn")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def tiny_pool_server(tmp_path) -> Iterator[tuple[str, str]]:
    services.require_redis()
    with services.fresh_database() as url:
        engine = make_engine(url)
        with make_session_factory(engine).begin() as session:
            _, key = create_api_key(session, user_name="load", key_name="load", admin=False)
        engine.dispose()
        settings = Settings(
            home=tmp_path, database_url=url, broker_url=services.REDIS_URL, db_pool_size=1, db_max_overflow=1
        )
        app = create_app(settings)
        app.state.auth_cache.ttl = 0  # every request authenticates against the database too
        for base in _serve(app):
            yield base, key


def test_many_more_requests_than_connections_all_succeed_quickly(tiny_pool_server: tuple[str, str]) -> None:
    base, key = tiny_pool_server
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            for _ in range(3):
                started = time.monotonic()
                status = c.get("/v1/datasets").status_code
                with lock:
                    results.append((status, time.monotonic() - started))

    # More requests in flight than the threadpool has threads (40) plus the pool has connections.
    threads = [threading.Thread(target=client) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 180
    # Deadlocked requests end in a 500 when the pool gives up after 30 s; queued ones just wait.
    assert {status for status, _ in results} == {200}
    assert max(elapsed for _, elapsed in results) < 25
