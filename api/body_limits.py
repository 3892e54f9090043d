"""A cap on JSON request bodies, enforced before anything parses them.

Without it a 128 MiB `POST /v1/runs` is read and parsed in full before its 200-character `name`
is checked, and the process keeps the memory. The cap is `MBPO_MAX_JSON_BYTES` for every JSON
body, plus room for the images a chat completion or spot-check may carry inline (base64 data URLs
of at most `inference_max_images` images of `max_image_bytes`). Multipart uploads are not JSON:
they have their own cap (`max_upload_bytes`, `api.uploads`).

A declared Content-Length over the cap is refused at once; a chunked body is counted while it
arrives and refused as soon as it passes the cap. Either way the answer is 413 with the error body
of the route's API (OpenAI's shape under /v1/chat/). A body within the cap that holds text the
database cannot store (`api.text_input`) is refused here too, as an invalid body (422, or 400
under /v1/chat/) naming the field: this is the one place that sees every JSON body whole.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import OPENAI_COMPATIBLE_PREFIXES, error_body, openai_error_body
from api.text_input import unstorable_json_field, unstorable_message
from infra.settings import Settings

# Routes whose JSON body may carry images inline.
IMAGE_ROUTES = ("/v1/chat/", "/v1/spot-checks")


def json_body_limit(settings: Settings, path: str) -> int:
    if path.startswith(IMAGE_ROUTES):
        images = settings.inference_max_images * (settings.max_image_bytes * 4 // 3 + 64)
        return settings.max_json_bytes + images
    return settings.max_json_bytes


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.split(b";")[0].strip().lower().endswith(b"json")
    return True  # no content type: FastAPI would still try to parse JSON


class JsonBodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in {"POST", "PUT", "PATCH"} or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        limit = json_body_limit(self.settings, scope["path"])
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, send, limit)
            return
        # Read the body here, counting, then hand it to the app as it arrived.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                await self._too_large(scope, send, limit)
                return
            if not message.get("more_body", False):
                break
        field = unstorable_json_field(b"".join(m.get("body", b"") for m in messages))
        if field is not None:
            await self._refuse(scope, send, 422, "validation_error", unstorable_message(field), field)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @classmethod
    async def _too_large(cls, scope: Scope, send: Send, limit: int) -> None:
        message = f"request body over {limit} bytes (MBPO_MAX_JSON_BYTES)"
        await cls._refuse(scope, send, 413, "payload_too_large", message, None)

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, status: int, code: str, message: str, field: str | None
    ) -> None:
        body: dict[str, Any]
        if scope["path"].startswith(OPENAI_COMPATIBLE_PREFIXES):
            status = 400 if status == 422 else status  # OpenAI's status for an invalid body
            body = openai_error_body(code, message, field, status)
        else:
            body = error_body(code, message, field)
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
