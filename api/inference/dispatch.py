"""Sending an inference request to the inference workers (infra.requests) and listening for its
replies (infra.replies), from async routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from api.errors import AppError, BadRequest, ServiceUnavailable
from infra.replies import ReplyReader
from infra.requests import InferenceRequest, RequestKind, submitted
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
    """The events of one sent request, each awaited with the inference timeout."""

    def __init__(self, reader: ReplyReader, request: InferenceRequest, timeout: float):
        self.reader = reader
        self.request = request
        self.timeout = timeout

    async def next(self) -> dict[str, Any]:
        try:
            event = await self.reader.next(self.timeout)
        except TimeoutError as exc:
            raise InferenceTimeout(
                f"no answer from an inference worker within {self.timeout:.0f}s "
                "(is a worker consuming the inference queue?)"
            ) from exc
        self.request.claimed = True  # a worker answers: nothing left to withdraw
        return event

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
    settings: Settings, kind: RequestKind, payload: dict[str, Any]
) -> AsyncIterator[Replies]:
    """Listen, then send the request; leaving the block withdraws it if no worker took it yet and
    tells the worker that has it that nobody listens any more."""
    timeout = settings.inference_timeout_seconds
    request = InferenceRequest.new(kind, payload, timeout)
    async with ReplyReader(settings, request.id) as reader, submitted(settings, request):
        yield Replies(reader, request, timeout)
