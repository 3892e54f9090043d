"""Chat completions: check the request (images, limits, model), send it to an inference worker,
and turn the worker's events into an OpenAI response or OpenAI server-sent events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import Principal
from api.errors import AppError, BadRequest, error_body
from api.inference.chat.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ImagePart,
    Usage,
)
from api.inference.dispatch import Replies, error_from_event, send_inference
from api.inference.images import load_image_url
from api.inference.models import ResolvedModel, ResolvedModels, resolve_model
from infra.requests import RequestKind
from infra.settings import Settings

_ROLES = {"developer": "system"}  # OpenAI's newer name for the system role


async def resolve(
    factory: sessionmaker[Session], cache: ResolvedModels, principal: Principal, name: str
) -> ResolvedModel:
    """From the recent resolutions, or in a short transaction of its own: no connection is held
    while the worker decodes."""
    resolved = cache.get((principal, name))
    if resolved is not None:
        return resolved

    def lookup() -> ResolvedModel:
        with factory.begin() as session:
            return resolve_model(session, principal, name)

    resolved = await anyio.to_thread.run_sync(lookup)
    cache.put((principal, name), resolved)
    return resolved


async def build_prompt(
    body: ChatCompletionRequest, settings: Settings
) -> tuple[list[dict[str, Any]], list[str]]:
    """OpenAI messages -> Hugging Face content-format messages and the images (base64), in order."""
    messages: list[dict[str, Any]] = []
    images: list[str] = []
    for i, message in enumerate(body.messages):
        content = message.content
        if content is None or isinstance(content, str):
            messages.append({"role": _ROLES.get(message.role, message.role), "content": content or ""})
            continue
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            if not isinstance(part, ImagePart):
                parts.append({"type": "text", "text": part.text})
                continue
            field = f"messages.{i}.content.{j}.image_url.url"
            if message.role != "user":
                raise BadRequest(
                    "images are only accepted in user messages", code="invalid_image", field=field
                )
            if len(images) >= settings.inference_max_images:
                raise BadRequest(
                    f"at most {settings.inference_max_images} image(s) per request",
                    code="too_many_images",
                    field=field,
                )
            image = await load_image_url(part.image_url.url, settings, field)
            images.append(image.b64)
            parts.append({"type": "image"})
        messages.append({"role": _ROLES.get(message.role, message.role), "content": parts})
    return messages, images


def sampling(body: ChatCompletionRequest, settings: Settings) -> dict[str, Any]:
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.inference_max_tokens
    if max_tokens > settings.inference_max_tokens:
        raise BadRequest(
            f"max_tokens is at most {settings.inference_max_tokens} on this server",
            code="max_tokens_too_large",
            field="max_tokens",
        )
    return {
        "max_tokens": max_tokens,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "seed": body.seed,
        "stop": body.stop or [],
    }


def _usage(done: dict[str, Any]) -> Usage:
    prompt, completion = int(done["prompt_tokens"]), int(done["completion_tokens"])
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def complete(
    body: ChatCompletionRequest,
    principal: Principal,
    settings: Settings,
    factory: sessionmaker[Session],
    resolved: ResolvedModels,
) -> ChatCompletion | AsyncIterator[bytes]:
    """A finished completion, or (stream=true) the SSE byte stream, which starts only once the
    worker has the model loaded: errors before that are plain HTTP errors with their status."""
    model = await resolve(factory, resolved, principal, body.model)
    messages, images = await build_prompt(body, settings)
    payload = {
        "model": model.spec(),
        "messages": messages,
        "images": images,
        "params": sampling(body, settings),
        "stream": body.stream,
    }
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    stack = AsyncExitStack()
    replies = await stack.enter_async_context(send_inference(settings, RequestKind.chat, payload))
    try:
        if body.stream:
            await replies.until("start")
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(stack, replies, completion_id, created, body.model, include_usage)
        done = await replies.until("done")
    except BaseException:
        await stack.aclose()
        raise
    await stack.aclose()
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=body.model,
        choices=[Choice(message=AssistantMessage(content=done["text"]), finish_reason=done["finish_reason"])],
        usage=_usage(done),
    )


def _frame(payload: ChatCompletionChunk | dict[str, Any]) -> bytes:
    if isinstance(payload, ChatCompletionChunk):
        data = payload.model_dump_json()
    else:
        data = json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _sse(
    stack: AsyncExitStack, replies: Replies, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None) -> bytes:
        choices = [] if usage is not None else [ChunkChoice(delta=delta, finish_reason=finish)]
        return _frame(
            ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage)
        )

    async with stack:  # closed when the stream ends or the client goes away
        yield chunk(Delta(role="assistant", content=""))
        try:
            while (event := await replies.next())["t"] != "done":
                if event["t"] == "error":
                    raise error_from_event(event)
                if event["t"] == "text":
                    yield chunk(Delta(content=event["d"]))
        except AppError as exc:
            body = error_body(exc.code, exc.message, exc.field)
            body["error"].update(type="server_error", param=exc.field)
            yield _frame(body)
            yield b"data: [DONE]\n\n"
            return
        yield chunk(Delta(), finish=event["finish_reason"])
        if include_usage:
            yield chunk(Delta(), usage=_usage(event))
        yield b"data: [DONE]\n\n"
