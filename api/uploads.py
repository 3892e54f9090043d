"""Reading request bodies under a size cap: 413 from the Content-Length header before anything is
read, and a byte count while streaming for bodies that lie about (or omit) their length."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.types import Message

from api.errors import BadRequest, PayloadTooLarge


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise BadRequest("malformed Content-Length header") from exc


def capped_request(request: Request, limit: int) -> Request:
    """A view of `request` whose body stream raises PayloadTooLarge past `limit` bytes."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes, limit {limit}")
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        return message

    return Request(request.scope, counting_receive)


async def read_form(request: Request, limit: int, *, max_files: int, max_fields: int) -> FormData:
    """Parse a multipart body (files are spooled to disk by Starlette) under the byte cap."""
    return await capped_request(request, limit).form(max_files=max_files, max_fields=max_fields)


async def read_body(request: Request, limit: int) -> bytes:
    return await capped_request(request, limit).body()
