"""The inference task functions without Celery: a chat completion or a spot-check decoded by the
serving core and replied through the embedded (file) reply transport, errors as replies."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.replies import ReplyReader
from infra.settings import Settings
from mbpo_core.models.loader import load_adapter
from mbpo_core.serving import engine as serving
from tests.helpers.inference import QUESTION, TinyModels, chat_messages, png_bytes
from worker.inference import run_chat_completion, run_spot_check


def _embedded_settings(tmp_path: Path) -> Settings:
    return Settings(env="test", home=tmp_path / "home")


def _payload(tiny: TinyModels, request_id: str, stream: bool) -> dict[str, object]:
    return {
        "request_id": request_id,
        "model": {"key": "base", "path": str(tiny.base), "base_path": None},
        "messages": chat_messages(),
        "images": [base64.b64encode(png_bytes()).decode()],
        "params": {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []},
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
    payload = _payload(tiny, f"req-{stream}", stream)
    events = asyncio.run(_listen(settings, f"req-{stream}", lambda: run_chat_completion(settings, payload)))
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
    run_chat_completion(settings, _payload(tiny, "nobody", stream=True))  # no reader ever listened
    assert not (settings.home_dir / "inference" / "replies" / "nobody.jsonl").exists()


def test_task_errors_are_replies(tiny: TinyModels, tmp_path: Path) -> None:
    settings = _embedded_settings(tmp_path)
    payload = {**_payload(tiny, "missing", stream=False), "model": {"key": "m", "path": str(tmp_path / "no")}}
    events = asyncio.run(_listen(settings, "missing", lambda: run_chat_completion(settings, payload)))
    assert events[-1]["t"] == "error" and events[-1]["code"] == "model_unavailable"
    spot = {
        "request_id": "spot",
        "model": {"key": "base", "path": str(tiny.base)},
        "image": base64.b64encode(png_bytes()).decode(),
        "question": QUESTION,
        "null_image": "gray",
        "max_tokens": 3,
    }
    (result,) = asyncio.run(_listen(settings, "spot", lambda: run_spot_check(settings, spot)))
    assert result["t"] == "result" and isinstance(result["answer_iig"], float)
