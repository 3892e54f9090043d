"""Outages handled as such, against servers of the test's own that it stops and starts again
(tests/helpers/services.py: a private redis-server, a private PostgreSQL cluster):

- the broker down: creating a run or a dataset still answers 201 (the job waits in the outbox),
  and once the broker is back the relay delivers the job to its Celery queue within seconds;
- the database down: the API answers 503 with Retry-After (our error shape; OpenAI's on the chat
  route), /readyz is 503 naming the database, and the API recovers by itself once it is back;
- the mapping of outage exceptions to 503 (and of other database errors to 500).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth.service import create_api_key
from api.errors import RETRY_AFTER_SECONDS, register_error_handlers
from infra.db.models import BaseModelRecord, Dataset, OutboxJob
from infra.db.session import make_engine, make_session_factory
from infra.jobs import TaskName, get_celery, sender
from infra.outbox import Relay
from infra.settings import Settings
from tests.helpers import services


def _headers(factory: sessionmaker[Session], user: str) -> dict[str, str]:
    with factory.begin() as session:
        _, key = create_api_key(session, user_name=user, key_name="k", admin=False)
    return {"Authorization": f"Bearer {key}"}


def _user_id(factory: sessionmaker[Session], headers: dict[str, str]) -> str:
    from api.auth.service import authenticate

    with factory.begin() as session:
        principal = authenticate(session, headers["Authorization"].split()[1])
        assert principal is not None
        return principal.user_id


def _run_refs(factory: sessionmaker[Session], owner_id: str) -> dict[str, Any]:
    with factory.begin() as session:
        model = BaseModelRecord(
            owner_id=owner_id, name="m", path="/m", family="qwen2_vl", model_type="qwen2_vl", param_count=1
        )
        dataset = Dataset(
            owner_id=owner_id,
            name="d",
            source="path",
            root_path="/nowhere",
            manifest_name="manifest.jsonl",
            status="ready",
            task_counts={"yes_no": 10},
        )
        session.add_all([model, dataset])
        session.flush()
        return {"name": "r", "base_model_id": model.id, "online_dataset_id": dataset.id}


def _queued(client: Any, prefix: str, queue: str) -> list[tuple[str, list[str]]]:
    """The (task name, args) of the Celery messages waiting in a Redis queue."""
    out = []
    for raw in client.lrange(f"{prefix}{queue}", 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args))
    return out


# ---- the broker down --------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[services.PrivateRedis]:
    with services.private_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def on_private_broker(committed_db: str, broker: services.PrivateRedis, tmp_path: Path) -> Settings:
    roots = tmp_path / "roots"
    (roots / "ds").mkdir(parents=True)
    (roots / "ds" / "manifest.jsonl").write_text("")
    return Settings(
        env="test",
        home=tmp_path / "home",
        database_url=committed_db,
        broker_url=broker.url,
        broker_key_prefix=services.broker_prefix(),
        data_roots=[roots],
    )


def test_jobs_created_while_the_broker_is_down_reach_it_within_seconds_of_its_return(
    on_private_broker: Settings, broker: services.PrivateRedis, pg_factory: sessionmaker[Session]
) -> None:
    settings = on_private_broker
    headers = _headers(pg_factory, "outage-broker")
    refs = _run_refs(pg_factory, _user_id(pg_factory, headers))
    with TestClient(create_app(settings)) as client:
        broker.stop()
        started = time.monotonic()
        run = client.post("/v1/runs", json=refs, headers=headers)
        assert run.status_code == 201, run.text
        dataset = client.post(
            "/v1/datasets", json={"name": "d", "path": str(settings.data_roots[0] / "ds")}, headers=headers
        )
        assert dataset.status_code == 201, dataset.text
        down_s = time.monotonic() - started
        assert down_s < 10  # two refused sends, not a hang
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
    run_id, dataset_id = run.json()["id"], dataset.json()["id"]
    with pg_factory() as session:
        waiting = {(j.name, tuple(j.args)): j for j in session.scalars(select(OutboxJob))}
    assert set(waiting) == {
        (TaskName.execute_run.value, (run_id,)),
        (TaskName.validate_dataset.value, (dataset_id,)),
    }
    assert all(j.attempts == 1 and j.last_error for j in waiting.values())

    relay = Relay(settings, sender(get_celery(settings)))  # as every worker runs it
    relay.start()
    try:
        time.sleep(1.5 * settings.outbox_relay_seconds)  # the relay tried while the broker was down
        broker.start()
        back = time.monotonic()
        redis = broker.client()
        services.wait_for(
            lambda: _queued(redis, settings.broker_key_prefix, "gpu"),
            timeout=15,
            interval=0.05,
            what="the run's job",
        )
        delay = time.monotonic() - back
        services.wait_for(
            lambda: _queued(redis, settings.broker_key_prefix, "cpu"), timeout=5, what="the dataset's job"
        )
    finally:
        relay.stop.set()
        relay.thread.join(10)
    assert delay < settings.outbox_relay_seconds + 3, delay
    assert _queued(redis, settings.broker_key_prefix, "gpu") == [(TaskName.execute_run.value, [run_id])]
    assert _queued(redis, settings.broker_key_prefix, "cpu") == [
        (TaskName.validate_dataset.value, [dataset_id])
    ]
    with pg_factory() as session:
        assert session.scalars(select(OutboxJob)).all() == []


# ---- the database down ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database() -> Iterator[services.PrivatePostgres]:
    with services.private_postgres() as server:
        yield server


@pytest.fixture
def on_private_database(
    database: services.PrivatePostgres, tmp_path: Path
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    services.require_redis()
    prefix = services.broker_prefix()
    settings = Settings(
        env="test",
        home=tmp_path / "home",
        database_url=database.url("mbpo"),
        broker_url=services.REDIS_URL,
        broker_key_prefix=prefix,
    )
    engine = make_engine(settings.sqlalchemy_url)
    headers = _headers(make_session_factory(engine), f"outage-db-{prefix}")
    engine.dispose()
    try:
        with TestClient(create_app(settings)) as client:
            yield client, headers
    finally:
        if not database.running:
            database.start()
        services.delete_redis_prefix(prefix)


def _assert_unavailable(resp: Any, what: str) -> dict[str, Any]:
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == "service_unavailable" and what in error["message"]
    return error


def test_while_the_database_is_down_the_api_answers_503_then_recovers(
    on_private_database: tuple[TestClient, dict[str, str]], database: services.PrivatePostgres
) -> None:
    client, headers = on_private_database
    assert client.get("/v1/runs", headers=headers).status_code == 200  # the key is cached from here on
    assert client.get("/readyz").status_code == 200

    database.stop()
    _assert_unavailable(client.get("/v1/runs", headers=headers), "database")
    _assert_unavailable(
        client.post("/v1/runs", json={"name": "r", "base_model_id": "m"}, headers=headers), "database"
    )
    fresh = {"Authorization": "Bearer mbpo_not_cached_yet"}  # authentication itself needs the database
    _assert_unavailable(client.get("/v1/datasets", headers=fresh), "database")
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "mdl_x", "messages": [{"role": "user", "content": "hi"}]},
        headers=fresh,
    )
    error = _assert_unavailable(chat, "database")
    assert error["type"] == "server_error" and "param" in error  # OpenAI's error shape
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"

    database.start()
    assert client.get("/v1/runs", headers=headers).status_code == 200  # no restart needed
    assert client.get("/readyz").status_code == 200


# ---- the mapping ------------------------------------------------------------------------------


def _raising_app() -> FastAPI:
    import redis.exceptions
    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy import exc as sa_exc

    failures: dict[str, Exception] = {
        "db_refused": sa_exc.OperationalError("SELECT secret_column", {"p": "secret"}, Exception("refused")),
        "db_interface": sa_exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")),
        "db_invalidated": sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True),
        "pool_timeout": sa_exc.TimeoutError("QueuePool limit of size 20 overflow 10 reached"),
        "kombu": KombuOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        "redis": redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379."),
        "redis_timeout": redis.exceptions.TimeoutError("Timeout reading from socket"),
        "db_constraint": sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
    }
    app = FastAPI()
    register_error_handlers(app)

    @app.get("/fail/{kind}")
    def fail(kind: str) -> None:
        raise failures[kind]

    @app.get("/v1/chat/fail/{kind}")
    def chat_fail(kind: str) -> None:
        raise failures[kind]

    return app


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("db_refused", "database"),
        ("db_interface", "database"),
        ("db_invalidated", "database"),
        ("pool_timeout", "database"),
        ("kombu", "broker"),
        ("redis", "broker"),
        ("redis_timeout", "broker"),
    ],
)
def test_outage_errors_are_503_with_retry_after(kind: str, what: str) -> None:
    with TestClient(_raising_app(), raise_server_exceptions=False) as client:
        resp = client.get(f"/fail/{kind}")
        error = _assert_unavailable(resp, what)
        assert "secret" not in resp.text and "type" not in error
        chat_error = _assert_unavailable(client.get(f"/v1/chat/fail/{kind}"), what)
        assert chat_error["type"] == "server_error" and chat_error["param"] is None


def test_other_database_errors_stay_500() -> None:
    with TestClient(_raising_app(), raise_server_exceptions=False) as client:
        resp = client.get("/fail/db_constraint")
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "internal_error"
    assert "Retry-After" not in resp.headers
