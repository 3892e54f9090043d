"""Live fan-out of committed run events over Redis pub/sub (when the broker is Redis).

The database stays the source of truth: a message is only a fast path. A subscriber that sees a
gap in `seq` (a publish lost between commit and send) reads the missing events from the table, and
in embedded mode (no Redis) readers simply poll the table.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from infra.db.models import RunEvent
from infra.events.store import event_payload
from infra.settings import Settings

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "mbpo:run-events:"


def redis_url(settings: Settings) -> str | None:
    """The Redis to publish on: the broker, when it is Redis (else None: readers poll)."""
    url = settings.broker_url
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        return url
    return None


def channel(settings: Settings, run_id: str) -> str:
    return f"{settings.broker_key_prefix}{CHANNEL_PREFIX}{run_id}"


def channel_pattern(settings: Settings) -> str:
    return f"{settings.broker_key_prefix}{CHANNEL_PREFIX}*"


_clients: dict[str, Any] = {}
_lock = threading.Lock()


def _client(url: str) -> Any:
    import redis

    with _lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        return _clients[url]


def publish_events(settings: Settings, payloads: Iterable[dict[str, Any]]) -> None:
    """Publish committed events; never raises (a lost message only costs a subscriber a DB read)."""
    url = redis_url(settings)
    if url is None:
        return
    try:
        client = _client(url)
        for payload in payloads:
            client.publish(channel(settings, payload["run_id"]), json.dumps(payload))
    except Exception:
        log.warning("could not publish run events (subscribers will read them from the database)")


def commit_and_publish(session: Session, settings: Settings, events: Iterable[RunEvent | None]) -> None:
    """Commit the session's transaction, then publish the events it wrote (None entries skipped):
    subscribers never hear of an event that is not in the table."""
    payloads = [event_payload(e) for e in events if e is not None]
    session.commit()
    publish_events(settings, payloads)
