"""Inference in the worker: the handlers (a chat completion or a spot-check decoded by the serving
core and replied through the embedded (file) reply transport, errors as replies), and the consumer
of the request channel on both transports: requests served concurrently and batched, and a
requester that goes away cancels its decoding."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import worker.inference
from infra.replies import ReplyReader
from infra.requests import InferenceRequest, RequestKind, submitted
from infra.settings import Settings
from mbpo_core.models.loader import load_adapter
from mbpo_core.serving import engine as serving
from tests.helpers.inference import QUESTION, TinyModels, channel_settings, chat_messages, png_bytes
from worker.inference import InferenceConsumer, run_chat_completion, run_spot_check


def _embedded_settings(tmp_path: Path) -> Settings:
    return Settings(env="test", home=tmp_path / "home")


def _payload(tiny: TinyModels, stream: bool, max_tokens: int = 4) -> dict[str, Any]:
    return {
        "model": {"key": "base", "path": str(tiny.base), "base_path": None},
        "messages": chat_messages(),
        "images": [base64.b64encode(png_bytes()).decode()],
        "params": {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []},
        "stream": stream,
    }


async def _listen(settings: Settings, request_id: str, work: Callable[[], None]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with ReplyReader(settings, request_id) as replies:
        await asyncio.to_thread(work)
        while not events or events[-1]["t"] not in {"done", "error", "result"}:
            events.append(await replies.next(timeout=5))
    return events


@pytest.mark.parametrize("stream", [True, False])
def test_chat_task_replies_through_the_embedded_transport(
    tiny: TinyModels, tmp_path: Path, stream: bool
) -> None:
    settings = _embedded_settings(tmp_path)
    payload = _payload(tiny, stream)
    events = asyncio.run(
        _listen(settings, f"req-{stream}", lambda: run_chat_completion(settings, f"req-{stream}", payload))
    )
    done = events[-1]
    assert done["t"] == "done" and done["completion_tokens"] == 4 and done["finish_reason"] == "length"
    texts = [e["d"] for e in events if e["t"] == "text"]
    if stream:
        assert events[0]["t"] == "start" and "".join(texts) == done["text"]
    else:
        assert events == [done]  # one reply, not one per token
    adapter = load_adapter(tiny.base)
    image = serving.pixels_from_bytes(png_bytes()).unsqueeze(0)
    assert done["text"] == adapter.generate(image, [QUESTION], max_new_tokens=4)[0]
    assert not list((settings.home_dir / "inference" / "replies").iterdir())  # the reader cleaned up


def test_chat_task_for_a_gone_requester_does_nothing(tiny: TinyModels, tmp_path: Path) -> None:
    settings = _embedded_settings(tmp_path)
    run_chat_completion(settings, "nobody", _payload(tiny, stream=True))  # no reader ever listened
    assert not (settings.home_dir / "inference" / "replies" / "nobody.jsonl").exists()


def test_task_errors_are_replies(tiny: TinyModels, tmp_path: Path) -> None:
    settings = _embedded_settings(tmp_path)
    payload = {**_payload(tiny, stream=False), "model": {"key": "m", "path": str(tmp_path / "no")}}
    events = asyncio.run(
        _listen(settings, "missing", lambda: run_chat_completion(settings, "missing", payload))
    )
    assert events[-1]["t"] == "error" and events[-1]["code"] == "model_unavailable"
    spot = {
        "model": {"key": "base", "path": str(tiny.base)},
        "image": base64.b64encode(png_bytes()).decode(),
        "question": QUESTION,
        "null_image": "gray",
        "max_tokens": 3,
    }
    (result,) = asyncio.run(_listen(settings, "spot", lambda: run_spot_check(settings, "spot", spot)))
    assert result["t"] == "result" and isinstance(result["answer_iig"], float)


# ---- the consumer of the request channel ----------------------------------------------------------


class _RecordingCache:
    """The process's real model cache, recording what each chat request ended with."""

    def __init__(self, cache: serving.ModelCache):
        self.cache = cache
        self.completions: list[serving.Completion] = []
        self.lock = threading.Lock()

    def get(self, source: serving.ModelSource) -> serving.ServedModel:
        return self.cache.get(source)

    def run(self, source: serving.ModelSource, fn: Callable[[Any], Any]) -> Any:
        return self.cache.run(source, fn)

    def chat(self, source: serving.ModelSource, request: serving.ChatRequest) -> serving.Completion:
        completion = self.cache.chat(source, request)
        with self.lock:
            self.completions.append(completion)
        return completion


@pytest.fixture(params=["file", "redis"])
def consumer(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, InferenceConsumer, _RecordingCache]]:
    with channel_settings(request.param, tmp_path / "home") as settings:
        cache = _RecordingCache(serving.ModelCache(1 << 30, max_batch=8))
        monkeypatch.setattr(worker.inference, "get_model_cache", lambda _settings: cache)
        consumer = InferenceConsumer(settings, concurrency=4)
        consumer.start()
        try:
            yield settings, consumer, cache
        finally:
            assert consumer.stop(grace=30)


async def _ask(
    settings: Settings, kind: RequestKind, payload: dict[str, Any], *, leave_after: int | None = None
) -> list[dict[str, Any]]:
    """Send a request through the channel and read its replies (all, or `leave_after` events)."""
    request = InferenceRequest.new(kind, payload, timeout=60)
    events: list[dict[str, Any]] = []
    async with ReplyReader(settings, request.id) as replies, submitted(settings, request):
        while len(events) != leave_after and (
            not events or events[-1]["t"] not in {"done", "error", "result"}
        ):
            events.append(await replies.next(timeout=60))
            request.claimed = True
    return events


def test_consumer_serves_concurrent_requests_in_batches(
    consumer: tuple[Settings, InferenceConsumer, _RecordingCache], tiny: TinyModels
) -> None:
    settings, _, cache = consumer
    spot = {
        "model": {"key": "base", "path": str(tiny.base)},
        "image": base64.b64encode(png_bytes()).decode(),
        "question": QUESTION,
        "null_image": "gray",
        "max_tokens": 3,
    }

    async def main() -> list[list[dict[str, Any]]]:
        await _ask(settings, RequestKind.chat, _payload(tiny, stream=False, max_tokens=2))  # loads the model
        chats = [
            _ask(settings, RequestKind.chat, _payload(tiny, stream=False, max_tokens=32)) for _ in range(6)
        ]
        return await asyncio.gather(*chats, _ask(settings, RequestKind.spot_check, spot))

    *chats, (spot_result,) = asyncio.run(main())
    expected = load_adapter(tiny.base).generate(
        serving.pixels_from_bytes(png_bytes()).unsqueeze(0), [QUESTION], max_new_tokens=32
    )[0]
    assert [events[-1]["text"] for events in chats] == [expected] * 6
    assert spot_result["t"] == "result"
    served = cache.cache.get(serving.ModelSource(key="base", path=str(tiny.base)))
    assert max(served.batch_sizes) > 1  # concurrent requests shared a generate call


def test_a_requester_that_leaves_cancels_its_decoding(
    consumer: tuple[Settings, InferenceConsumer, _RecordingCache], tiny: TinyModels
) -> None:
    settings, _, cache = consumer
    payload = _payload(tiny, stream=True, max_tokens=2000)  # seconds of decoding if nobody stops it
    events = asyncio.run(_ask(settings, RequestKind.chat, payload, leave_after=3))
    assert [e["t"] for e in events] == ["start", "text", "text"]
    deadline = time.monotonic() + 10
    while not cache.completions and time.monotonic() < deadline:
        time.sleep(0.02)
    (completion,) = cache.completions
    assert completion.finish_reason == "cancelled" and completion.completion_tokens < 200
