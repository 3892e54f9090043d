"""Server-Sent Events for a run: replay from the table, then live.

Each client keeps `last`, the highest `seq` it was sent, and only ever sends `last + 1`: events come
from the table (`seq > last`, in order) or, with Redis, straight from the pub/sub message when it is
exactly the next one. A message that skips ahead (a lost publish) or a quiet interval sends the
client back to the table. So there is no gap and no duplicate, across reconnects too
(`Last-Event-ID` is the `last` of the new connection).

One Redis connection per API process (`EventHub`, a pattern subscription) fans messages out to
the clients of that process; without Redis (embedded mode) clients poll the table. A comment line
is sent as keep-alive every `sse_ping_seconds`; the stream ends once the run is finished and its
terminal event was sent. A disconnected client's generator is cancelled by the server and its
subscription removed in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker

from api.runs.repository import RunRepository
from infra.events.publish import channel_pattern, redis_url
from infra.events.store import event_payload, events_after
from infra.runs.lifecycle import TERMINAL, TERMINAL_EVENT_TYPES
from infra.settings import Settings

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between table reads without Redis
QUEUE_SIZE = 1000  # messages a slow client may lag behind before it reads the table instead


class EventHub:
    """One pattern subscription per process and event loop, dispatching to per-run client queues."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = redis_url(settings)
        self.listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self.task: asyncio.Task[None] | None = None

    def subscribe(self, run_id: str) -> asyncio.Queue[dict[str, Any]]:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._reader())
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.listeners.setdefault(run_id, set()).add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        queues = self.listeners.get(run_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self.listeners[run_id]

    @property
    def clients(self) -> int:
        return sum(len(q) for q in self.listeners.values())

    def _dispatch(self, raw: bytes | str) -> None:
        try:
            payload = json.loads(raw)
            queues = self.listeners.get(payload["run_id"], ())
        except (ValueError, KeyError, TypeError):
            return
        for queue in list(queues):
            with contextlib.suppress(asyncio.QueueFull):  # the client will read the table
                queue.put_nowait(payload)

    async def _reader(self) -> None:
        import redis.asyncio as aioredis

        assert self.url is not None
        while True:
            client = aioredis.Redis.from_url(self.url)
            try:
                pubsub = client.pubsub()
                await pubsub.psubscribe(channel_pattern(self.settings))
                async for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event hub lost Redis; clients read the table until it is back")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventHub] = weakref.WeakKeyDictionary()


def get_hub(settings: Settings) -> EventHub | None:
    """The hub of the running event loop, or None without Redis (clients poll)."""
    if redis_url(settings) is None:
        return None
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = EventHub(settings)
    return hub


@dataclass
class _Snapshot:
    events: list[dict[str, Any]]
    finished: bool  # the run is finished and every event it has was read


def _read(factory: sessionmaker[Session], run_id: str, after: int) -> _Snapshot:
    with factory() as session:
        head = RunRepository(session).status_and_event_seq(run_id)
        if head is None:
            return _Snapshot([], True)
        events = [event_payload(e) for e in events_after(session, run_id, after, limit=500)]
    last = events[-1]["seq"] if events else after
    return _Snapshot(events, head.status in TERMINAL and last >= head.event_seq)


def format_event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    return f"id: {payload['seq']}\nevent: {payload['type']}\ndata: {data}\n\n".encode()


async def event_stream(
    factory: sessionmaker[Session], settings: Settings, run_id: str, after: int
) -> AsyncGenerator[bytes, None]:
    hub = get_hub(settings)
    queue = hub.subscribe(run_id) if hub is not None else None
    last = after
    last_sent = time.monotonic()
    try:
        yield b"retry: 2000\n\n"
        read_table = True
        while True:
            if read_table:
                snapshot = await anyio.to_thread.run_sync(_read, factory, run_id, last)
                for payload in snapshot.events:
                    yield format_event(payload)
                    last, last_sent = payload["seq"], time.monotonic()
                if snapshot.finished:
                    return
                if len(snapshot.events) == 500:
                    continue  # a long backlog: keep reading
            ping = settings.sse_ping_seconds
            wait = max(0.05, min(ping - (time.monotonic() - last_sent), ping))
            read_table = True
            if queue is None:
                await asyncio.sleep(min(POLL_INTERVAL, wait))
            else:
                try:
                    payload = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    pass
                else:
                    # Only the exact next event is sent from the message; anything else (a gap, a
                    # terminal event that may end the stream) goes through the table.
                    if payload["seq"] <= last:
                        read_table = False
                    elif payload["seq"] == last + 1 and payload["type"] not in TERMINAL_EVENT_TYPES:
                        yield format_event(payload)
                        last, last_sent = payload["seq"], time.monotonic()
                        read_table = False
            if time.monotonic() - last_sent >= ping:
                yield b": ping\n\n"
                last_sent = time.monotonic()
                read_table = True  # also re-check the table (a lost last message)
    finally:
        if hub is not None and queue is not None:
            hub.unsubscribe(run_id, queue)
