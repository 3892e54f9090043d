"""Sending an inference task and listening for its replies, from async routes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from api.errors import AppError, BadRequest, ServiceUnavailable
from infra.jobs import TaskName, get_celery
from infra.replies import ReplyReader
from infra.settings import Settings


class InferenceTimeout(AppError):
    status_code = 504
    code = "inference_timeout"


class InferenceFailed(AppError):
    status_code = 500
    code = "inference_failed"


def error_from_event(event: dict[str, Any]) -> AppError:
    """The API error for a worker's `error` event."""
    code, message = str(event.get("code", "internal_error")), str(event.get("message", "inference failed"))
    if code == "invalid_request":
        return BadRequest(message, code=code)
    if code == "model_unavailable":
        return ServiceUnavailable(message, code=code, field="model")
    return InferenceFailed(message, code=code)


class Replies:
    """The events of one sent task, each awaited with the inference timeout."""

    def __init__(self, reader: ReplyReader, timeout: float):
        self.reader = reader
        self.timeout = timeout

    async def next(self) -> dict[str, Any]:
        try:
            return await self.reader.next(self.timeout)
        except TimeoutError as exc:
            raise InferenceTimeout(
                f"no answer from an inference worker within {self.timeout:.0f}s "
                "(is a worker consuming the inference queue?)"
            ) from exc

    async def until(self, kind: str) -> dict[str, Any]:
        """Skip progress events up to the first `kind` event; a worker error raises."""
        while True:
            event = await self.next()
            if event["t"] == "error":
                raise error_from_event(event)
            if event["t"] == kind:
                return event


@asynccontextmanager
async def send_inference(
    settings: Settings, task: TaskName, payload: dict[str, Any]
) -> AsyncIterator[Replies]:
    """Listen, then send `task` with `payload` (plus its request id); leaving the block tells the
    worker nobody listens any more."""
    request_id = uuid.uuid4().hex
    timeout = settings.inference_timeout_seconds
    async with ReplyReader(settings, request_id) as reader:
        message = {**payload, "request_id": request_id}
        celery = get_celery(settings)
        # A message still queued after the requester gave up is dropped unread.
        await anyio.to_thread.run_sync(lambda: celery.send_task(task.value, args=[message], expires=timeout))
        yield Replies(reader, timeout)
