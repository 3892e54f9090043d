"""Inference requests on their way from the API to an inference worker (chat completions and
spot-checks), without a Celery task per request; the replies come back through `infra.replies`.

A request is one JSON document: an id (also its reply channel's), a kind, the wall-clock time
after which nobody waits for it any more, and the request itself (images included; it is never
stored). With Redis as the broker the API LPUSHes it onto one list per deployment
(`{broker_key_prefix}mbpo:inference:requests`) and every inference worker BRPOPs from that list:
each request reaches exactly one worker, oldest first. With the embedded broker the list is a
directory in MBPO_HOME (`inference/requests/`): the API writes each request aside and renames it
in (a reader never sees half of one); workers poll the directory with the reply files' short
backoff and claim a file by deleting it: of several workers reading the same file, the one whose
delete succeeds has it.

A request nobody has claimed is dropped: the API withdraws it when it stops waiting (answered,
timed out, client gone), and a worker drops one whose time is up (its API process died first).
Imported by the API and the worker: no fastapi, no torch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from infra.replies import FILE_POLL_S, async_redis, sync_redis, transport
from infra.settings import Settings

log = logging.getLogger(__name__)


class RequestKind(StrEnum):
    chat = "chat"
    spot_check = "spot_check"


@dataclass
class InferenceRequest:
    id: str
    kind: RequestKind
    payload: dict[str, Any]
    expires_at: float  # time.time(): API and workers share a clock (NTP) as they share Redis
    claimed: bool = field(default=False, compare=False)  # API side: a worker has answered

    @classmethod
    def new(cls, kind: RequestKind, payload: dict[str, Any], timeout: float) -> InferenceRequest:
        return cls(uuid.uuid4().hex, kind, payload, time.time() + timeout)

    def expired(self) -> bool:
        return time.time() > self.expires_at

    def encode(self) -> bytes:
        body = {
            "id": self.id,
            "kind": self.kind.value,
            "expires_at": self.expires_at,
            "payload": self.payload,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> InferenceRequest:
        body = json.loads(data)
        return cls(str(body["id"]), RequestKind(body["kind"]), body["payload"], float(body["expires_at"]))


def _list_key(settings: Settings) -> str:
    return f"{settings.broker_key_prefix}mbpo:inference:requests"


def _request_dir(settings: Settings) -> Path:
    return settings.home_dir / "inference" / "requests"


def _file_name(request: InferenceRequest) -> str:
    # Named by arrival, so a sorted listing is oldest first.
    return f"{time.time_ns():020d}-{request.id}.json"


# ---- API side (async) ------------------------------------------------------------------------------


@asynccontextmanager
async def submitted(settings: Settings, request: InferenceRequest) -> AsyncIterator[InferenceRequest]:
    """Hand `request` to the inference workers; leaving the block withdraws it unless a worker has
    taken it (`request.claimed`, set by the caller on the first reply)."""
    if transport(settings) == "redis":
        client, key, data = async_redis(settings.celery_broker_url), _list_key(settings), request.encode()
        pipe = client.pipeline(transaction=False)
        pipe.lpush(key, data)
        # Every request in the list expires before the newest one: the list may go with it.
        pipe.expire(key, math.ceil(request.expires_at - time.time()) + 1)
        await pipe.execute()
        try:
            yield request
        finally:
            if not request.claimed:  # shielded: also done when the client's disconnect cancels us
                await asyncio.shield(client.lrem(key, 1, data))
        return
    path = _request_dir(settings) / _file_name(request)
    await asyncio.to_thread(_write_file, path, request.encode())
    try:
        yield request
    finally:
        if not request.claimed:
            path.unlink(missing_ok=True)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.tmp")  # dot files are never claimed
    aside.write_bytes(data)
    os.replace(aside, path)


# ---- worker side (sync) ----------------------------------------------------------------------------


class RequestSource:
    """A worker's end of the channel: `claim(timeout)` returns the next request for this worker
    alone, or None after `timeout` seconds without one. Thread-safe."""

    def __init__(self, settings: Settings):
        self.kind = transport(settings)
        self.url = settings.celery_broker_url
        self.key = _list_key(settings)
        self.dir = _request_dir(settings)

    def claim(self, timeout: float) -> InferenceRequest | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            data = self._pop_redis(left) if self.kind == "redis" else self._pop_file(left)
            if data is None:
                return None
            try:
                request = InferenceRequest.decode(data)
            except (ValueError, KeyError, TypeError):
                log.error("dropped a malformed inference request (%d bytes)", len(data))
                continue
            if not request.expired():
                return request
            log.info("dropped inference request %s: nobody waits for it any more", request.id)

    def _pop_redis(self, timeout: float) -> bytes | None:
        # BRPOP takes 0 as "forever"; the shortest real wait is a millisecond.
        popped = sync_redis(self.url).brpop([self.key], timeout=max(timeout, 0.001))
        return None if popped is None else bytes(popped[1])

    def _pop_file(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        pause = FILE_POLL_S[0]
        while True:
            data = self._take_oldest_file()
            if data is not None:
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, FILE_POLL_S[1])

    def _take_oldest_file(self) -> bytes | None:
        try:
            names = sorted(e.name for e in os.scandir(self.dir) if e.name.endswith(".json"))
        except FileNotFoundError:
            return None
        for name in names:
            path = self.dir / name
            try:
                data = path.read_bytes()
                path.unlink()  # the claim: exactly one reader's delete succeeds
            except FileNotFoundError:
                continue  # claimed by another worker, or withdrawn by its requester
            return data
        return None
