"""The inference request channel on both transports (a directory in MBPO_HOME, a Redis list):
each request reaches exactly one of several competing workers, oldest first; a request whose
requester left, or whose time is up, is never handed out and leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from infra.requests import InferenceRequest, RequestKind, RequestSource, submitted
from infra.settings import Settings
from tests.helpers.inference import channel_settings


@pytest.fixture(params=["file", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with channel_settings(request.param, tmp_path / "home") as settings:
        yield settings


def _left_in_channel(settings: Settings) -> int:
    source = RequestSource(settings)
    if source.kind == "redis":
        import redis

        return int(redis.Redis.from_url(source.url).llen(source.key))
    return len(list(source.dir.glob("*.json"))) if source.dir.exists() else 0


def _request(n: int, timeout: float = 30.0) -> InferenceRequest:
    return InferenceRequest.new(RequestKind.chat, {"n": n, "images": ["x" * 1000]}, timeout)


def test_each_request_is_claimed_by_exactly_one_worker(settings: Settings) -> None:
    claimed: list[InferenceRequest] = []
    lock = threading.Lock()

    def worker(source: RequestSource) -> None:
        while (request := source.claim(0.5)) is not None:
            with lock:
                claimed.append(request)

    async def main() -> list[InferenceRequest]:
        async with AsyncExitStack() as stack:
            sent = [await stack.enter_async_context(submitted(settings, _request(n))) for n in range(40)]
            workers = [threading.Thread(target=worker, args=(RequestSource(settings),)) for _ in range(4)]
            for thread in workers:
                thread.start()
            await asyncio.to_thread(lambda: [t.join() for t in workers])
            return sent

    sent = asyncio.run(main())
    assert sorted(r.id for r in claimed) == sorted(r.id for r in sent)  # every one, none twice
    assert claimed[0] == sent[0] and claimed[0].payload == {"n": 0, "images": ["x" * 1000]}
    assert _left_in_channel(settings) == 0


def test_requests_come_oldest_first(settings: Settings) -> None:
    async def main() -> tuple[list[str], list[str | None]]:
        async with AsyncExitStack() as stack:
            sent = [await stack.enter_async_context(submitted(settings, _request(n))) for n in range(5)]
            source = RequestSource(settings)
            got = [await asyncio.to_thread(source.claim, 1.0) for _ in sent]
            return [r.id for r in sent], [g.id if g else None for g in got]

    sent, got = asyncio.run(main())
    assert got == sent


def test_a_request_whose_requester_left_is_withdrawn(settings: Settings) -> None:
    async def main() -> None:
        async with submitted(settings, _request(1)):
            assert _left_in_channel(settings) == 1
        assert _left_in_channel(settings) == 0
        # the requester was cancelled (its client disconnected) while waiting
        task = asyncio.create_task(_wait_forever(settings))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # the shielded withdrawal completes

    asyncio.run(main())
    assert _left_in_channel(settings) == 0
    assert RequestSource(settings).claim(0.1) is None


async def _wait_forever(settings: Settings) -> None:
    async with submitted(settings, _request(2)):
        await asyncio.sleep(3600)


def test_expired_requests_are_dropped_unread(settings: Settings) -> None:
    async def main() -> InferenceRequest | None:
        # The API process died: nobody withdraws these, but their time is up before a worker looks.
        async with AsyncExitStack() as stack:
            for n in range(3):
                await stack.enter_async_context(submitted(settings, _request(n, timeout=0.05)))
            fresh = await stack.enter_async_context(submitted(settings, _request(9)))
            time.sleep(0.1)
            got = await asyncio.to_thread(RequestSource(settings).claim, 0.3)
            assert got == fresh
            return await asyncio.to_thread(RequestSource(settings).claim, 0.1)

    assert asyncio.run(main()) is None
    assert _left_in_channel(settings) == 0


def test_a_claim_waits_at_most_its_timeout(settings: Settings) -> None:
    source = RequestSource(settings)
    started = time.monotonic()
    assert source.claim(0.2) is None
    assert 0.15 < time.monotonic() - started < 1.5
