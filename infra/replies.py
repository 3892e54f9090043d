"""Replies of inference workers to the API request waiting for them (the request went there through
`infra.requests`): a stream of small JSON events (`start`, `text`, `done`, `result`, `error`) per
request id.

Chat completions are not stored, so the database is no place for their tokens. With Redis as the
broker each request has a Redis list the worker appends to and the API pops from (a list, not
pub/sub: nothing is lost when the worker is quicker than the reader). With the embedded broker the
API and its worker share `MBPO_HOME`, and the list is an append-only file there.

Both sides also agree on whether the requester is still there (an "alive" key, or the file
itself): the API removes it when it stops listening (finished, timed out, client gone), and the
worker stops decoding for nobody. Imported by the API and the worker: no fastapi, no torch.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol

from infra.settings import Settings

# A reply list outlives its request only this long if the reader vanished without cleaning up.
REPLY_TTL_S = 600
# First and longest pause between reads of a file that has nothing new yet (reply files here, the
# request directory in infra.requests).
FILE_POLL_S = (0.002, 0.02)


class RepliesUnsupported(RuntimeError):
    """The broker is neither Redis nor the embedded one."""


def transport(settings: Settings) -> str:
    url = settings.celery_broker_url
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    if url.startswith("sqla+sqlite"):
        return "file"
    raise RepliesUnsupported("inference replies need Redis or the embedded broker")


def _keys(settings: Settings, request_id: str) -> tuple[str, str]:
    base = f"{settings.broker_key_prefix}mbpo:reply:{request_id}"
    return base, base + ":alive"


def _reply_file(settings: Settings, request_id: str) -> Path:
    return settings.home_dir / "inference" / "replies" / f"{request_id}.jsonl"


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


# ---- worker side (sync) ----------------------------------------------------------------------------


class ReplyWriter(Protocol):
    def send(self, event: dict[str, Any]) -> bool:
        """Deliver `event`; False once the requester has stopped listening."""

    def alive(self) -> bool:
        """Whether the requester is still listening."""

    def close(self) -> None: ...


_sync_clients: dict[str, Any] = {}
_sync_lock = threading.Lock()


def sync_redis(url: str) -> Any:
    """The process's Redis client for `url` (thread-safe; shared by the reply and request channels)."""
    import redis

    with _sync_lock:
        if url not in _sync_clients:
            _sync_clients[url] = redis.Redis.from_url(url)
        return _sync_clients[url]


class _RedisWriter:
    def __init__(self, client: Any, key: str, alive_key: str):
        self.client, self.key, self.alive_key = client, key, alive_key

    def send(self, event: dict[str, Any]) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.alive_key)
        pipe.rpush(self.key, _encode(event))
        pipe.expire(self.key, REPLY_TTL_S)
        alive, *_ = pipe.execute()
        if not alive:
            self.client.delete(self.key)
        return bool(alive)

    def alive(self) -> bool:
        return bool(self.client.exists(self.alive_key))

    def close(self) -> None:
        return None


class _FileWriter:
    def __init__(self, path: Path):
        self.path = path
        try:  # never O_CREAT: a missing file means the requester is gone
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            self.fd = None

    def send(self, event: dict[str, Any]) -> bool:
        if self.fd is None or not self.path.exists():
            return False
        os.write(self.fd, _encode(event))
        return True

    def alive(self) -> bool:
        return self.fd is not None and self.path.exists()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_writer(settings: Settings, request_id: str) -> ReplyWriter:
    if transport(settings) == "redis":
        key, alive = _keys(settings, request_id)
        return _RedisWriter(sync_redis(settings.celery_broker_url), key, alive)
    return _FileWriter(_reply_file(settings, request_id))


# ---- API side (async) ------------------------------------------------------------------------------

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def async_redis(url: str) -> Any:
    """The Redis client for `url` of the running event loop."""
    import redis.asyncio

    per_loop = _async_clients.setdefault(asyncio.get_running_loop(), {})
    if url not in per_loop:
        per_loop[url] = redis.asyncio.Redis.from_url(url)
    return per_loop[url]


class ReplyReader:
    """`async with ReplyReader(settings, id) as replies:` listen before the task is sent, then
    `await replies.next(timeout)` per event. Leaving the block tells the worker to stop."""

    def __init__(self, settings: Settings, request_id: str):
        self.kind = transport(settings)
        self.url = settings.celery_broker_url
        self.key, self.alive_key = _keys(settings, request_id)
        self.path = _reply_file(settings, request_id)
        self._buffer = b""
        self._offset = 0
        self._alive_until = 0.0

    async def __aenter__(self) -> ReplyReader:
        if self.kind == "redis":
            await async_redis(self.url).set(self.alive_key, b"1", ex=REPLY_TTL_S)
            self._alive_until = asyncio.get_running_loop().time() + REPLY_TTL_S
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "redis":
            # Shielded: a client's disconnect cancels the request, and the worker must still learn it.
            await asyncio.shield(async_redis(self.url).delete(self.alive_key, self.key))
        else:
            self.path.unlink(missing_ok=True)

    async def next(self, timeout: float) -> dict[str, Any]:
        """The next event; TimeoutError after `timeout` seconds without one."""
        if self.kind == "redis":
            client = async_redis(self.url)
            now = asyncio.get_running_loop().time()
            if self._alive_until - now < REPLY_TTL_S / 2:  # a long answer: still listening
                await client.expire(self.alive_key, REPLY_TTL_S)
                self._alive_until = now + REPLY_TTL_S
            popped = await client.blpop([self.key], timeout=max(timeout, 0.01))
            if popped is None:
                raise TimeoutError
            event: dict[str, Any] = json.loads(popped[1])
            return event
        return await self._next_from_file(timeout)

    async def _next_from_file(self, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = FILE_POLL_S[0]
        while b"\n" not in self._buffer:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            self._offset += len(chunk)
            self._buffer += chunk
            if b"\n" in self._buffer:
                break
            if loop.time() >= deadline:
                raise TimeoutError
            await asyncio.sleep(pause)
            pause = min(pause * 2, FILE_POLL_S[1])
        line, self._buffer = self._buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        return event
