"""Per-key rate limits on run creation and inference: 429 `rate_limited` with Retry-After (in the
OpenAI error shape on the chat route), per key, shared by API processes through Redis, allowed
again once the window passed, in-process without Redis, and fail-open when Redis is unreachable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.deps import get_read_session_factory, get_session_factory
from api.errors import TooManyRequests
from api.rate_limits import LimitKind, LocalWindows, RateLimiter, RedisWindows
from infra.db.models import BaseModelRecord, Dataset
from infra.settings import Settings
from tests.api.conftest import KeyFor
from tests.helpers import services

WINDOW = 1.5  # seconds


@pytest.fixture
def limited_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "rate_limit_runs_per_minute": 2,
            "rate_limit_inference_per_minute": 1,
            "rate_limit_window_seconds": WINDOW,
        }
    )


@pytest.fixture
def make_client(
    limited_settings: Settings, session_factory: sessionmaker[Session]
) -> Callable[..., TestClient]:
    """A client of a new app (another API process) on the test's database and Redis prefix."""
    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        app = create_app(limited_settings.model_copy(update=changes))
        app.dependency_overrides[get_session_factory] = lambda: session_factory
        app.dependency_overrides[get_read_session_factory] = lambda: session_factory
        clients.append(TestClient(app).__enter__())
        return clients[-1]

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _run_body(factory: sessionmaker[Session], owner: KeyFor) -> dict[str, Any]:
    with factory.begin() as session:
        model = BaseModelRecord(
            owner_id=owner.user_id,
            name="m",
            path="/nowhere/model",
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=["Qwen2VLForConditionalGeneration"],
            param_count=1,
        )
        dataset = Dataset(
            owner_id=owner.user_id,
            name="d",
            source="path",
            root_path="/nowhere",
            manifest_name="manifest.jsonl",
            status="ready",
            task_counts={"yes_no": 10},
        )
        session.add_all([model, dataset])
        session.flush()
        return {"name": "r", "base_model_id": model.id, "offline_dataset_id": dataset.id}


def _assert_limited(resp: Any, window: float = WINDOW) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["retry-after"]) <= max(1, round(window + 0.5))


def test_run_creation_is_limited_per_key_across_processes_until_the_window_passes(
    make_client: Callable[..., TestClient],
    session_factory: sessionmaker[Session],
    alice: KeyFor,
    bob: KeyFor,
) -> None:
    one, other = make_client(), make_client()
    body, bobs = _run_body(session_factory, alice), _run_body(session_factory, bob)
    assert one.post("/v1/runs", json=body, headers=alice.headers).status_code == 201
    assert other.post("/v1/runs", json=body, headers=alice.headers).status_code == 201  # 2 of 2
    refused = one.post("/v1/runs", json=body, headers=alice.headers)
    _assert_limited(refused)
    assert set(refused.json()["error"]) == {"code", "message"}  # the service's error shape
    _assert_limited(other.post("/v1/runs", json=body, headers=alice.headers))  # the count is shared
    assert other.post("/v1/runs", json=bobs, headers=bob.headers).status_code == 201  # another key
    assert one.get("/v1/runs", headers=alice.headers).status_code == 200  # reads are not limited
    time.sleep(int(refused.headers["retry-after"]) + 0.1)
    assert one.post("/v1/runs", json=body, headers=alice.headers).status_code == 201


def test_inference_is_limited_with_the_openai_error_shape_on_the_chat_route(
    make_client: Callable[..., TestClient], alice: KeyFor, bob: KeyFor
) -> None:
    client = make_client()
    chat = {"model": "model:mdl_nowhere", "messages": [{"role": "user", "content": "hi"}]}
    first = client.post("/v1/chat/completions", json=chat, headers=alice.headers)
    assert first.status_code == 404  # counted all the same: it reached the route
    refused = client.post("/v1/chat/completions", json=chat, headers=alice.headers)
    _assert_limited(refused)
    error = refused.json()["error"]
    assert error["type"] == "requests" and error["param"] is None  # OpenAI's shape
    # Spot-checks share the inference limit.
    spot = client.post("/v1/spot-checks", json={}, headers=alice.headers)
    _assert_limited(spot)
    assert "type" not in spot.json()["error"]
    assert client.post("/v1/chat/completions", json=chat, headers=bob.headers).status_code == 404


def test_zero_means_unlimited(make_client: Callable[..., TestClient], alice: KeyFor) -> None:
    client = make_client(rate_limit_inference_per_minute=0)
    chat = {"model": "model:mdl_nowhere", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(5):
        assert client.post("/v1/chat/completions", json=chat, headers=alice.headers).status_code == 404


def test_an_unreachable_redis_lets_requests_through(
    make_client: Callable[..., TestClient], limited_settings: Settings, alice: KeyFor
) -> None:
    client = make_client()
    app = client.app
    assert isinstance(app, FastAPI)
    dead = f"redis://127.0.0.1:{services.free_port()}/0"
    app.state.rate_limiter = RateLimiter(
        limited_settings, RedisWindows(dead, limited_settings.broker_key_prefix)
    )
    chat = {"model": "model:mdl_nowhere", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):  # over the limit of 1, but nothing counts: allowed, not 500
        assert client.post("/v1/chat/completions", json=chat, headers=alice.headers).status_code == 404


def test_the_in_process_limiter_of_embedded_mode() -> None:
    now = [100.0]
    settings = Settings(env="test", rate_limit_runs_per_minute=2, rate_limit_window_seconds=60)
    assert settings.embedded
    limiter = RateLimiter(settings)
    assert isinstance(limiter.windows, LocalWindows)
    limiter.windows = LocalWindows(clock=lambda: now[0])

    async def scenario() -> None:
        await limiter.check(LimitKind.runs, "key_a")
        now[0] += 10
        await limiter.check(LimitKind.runs, "key_a")
        with pytest.raises(TooManyRequests) as refused:
            await limiter.check(LimitKind.runs, "key_a")
        assert refused.value.headers == {"Retry-After": "50"}  # the window opened at 100 s
        await limiter.check(LimitKind.runs, "key_b")  # another key
        await limiter.check(LimitKind.inference, "key_a")  # another kind
        now[0] += 50
        await limiter.check(LimitKind.runs, "key_a")  # a new window

    asyncio.run(scenario())
