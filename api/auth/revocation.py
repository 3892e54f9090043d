"""Revoking an API key, effective at once in every API process.

`revoke_key` revokes the key in the request's transaction and, once that transaction committed,
`Revocations.announce` empties this process's auth cache and publishes the revocation on Redis
(`<broker_key_prefix>mbpo:auth-revocations`). Every API process follows that channel with one
listener task (`Revocations.listen`, started by the first authenticated request of its event loop);
on a message it empties its cache, then acknowledges by pushing to the list the message names.
`announce` waits for as many acknowledgements as PUBLISH reported receivers (at most
`ACK_TIMEOUT_SECONDS`), so when the revoke call returns, every subscribed API process has dropped
the key: its next request with the key reaches the database and is refused. A cache hit costs no
Redis round trip; the acknowledgements cost one per process and revocation.

Fail safe: the cache is trusted only while the listener is subscribed. Until the subscription is
confirmed, after the connection fails, or when PINGs go unanswered for `STALE_SECONDS` (a silent
network loss), the cache is distrusted and every request is checked against the database; on
resubscribing the cache starts empty, since a revocation may have been missed. A subscriber that
does not acknowledge in time (its event loop stalled) is logged; it still drops the key when it
reads the message.

Without Redis (embedded mode: one API process) the announcement empties the local cache only. A
deployment with several API processes but no Redis broker gets no cross-process announcement:
there a revoked key works at most `AUTH_CACHE_SECONDS` longer in the other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from api.auth.cache import AUTH_CACHE_SECONDS, AuthCache
from api.auth.service import Principal, revoke_api_key
from infra.db.models import ApiKey
from infra.events.publish import redis_url
from infra.jobs import JobQueue
from infra.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "mbpo:auth-revocations"
PING_SECONDS = 1.0  # a quiet subscription is PINGed this often
STALE_SECONDS = 3.0  # no message nor PONG for this long: the connection is presumed lost
RETRY_SECONDS = 1.0  # wait between reconnection attempts
ACK_TIMEOUT_SECONDS = 1.0  # longest wait of a revocation for the other processes' acknowledgements


class Revocations:
    """This process's end of the revocation channel: announces revocations and follows them."""

    def __init__(self, settings: Settings, cache: AuthCache):
        self.cache = cache
        self.url = redis_url(settings)
        self.channel = f"{settings.broker_key_prefix}{CHANNEL}"
        self.client_name = f"{settings.broker_key_prefix}auth-revocations".replace(" ", "_")
        self._task: asyncio.Task[None] | None = None
        self._publisher: Any = None
        if self.url is not None:
            cache.distrust()  # until the listener is subscribed

    def listen(self) -> None:
        """Make sure the listener runs on the current event loop (cheap when it does; nothing to do
        without Redis)."""
        if self.url is None:
            return
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done():
            if task.get_loop() is loop:
                return
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                task.get_loop().call_soon_threadsafe(task.cancel)
        self.cache.distrust()
        self._task = loop.create_task(self._follow(), name="auth-revocations")

    def announce(self, key_id: str) -> None:
        """Key `key_id` was revoked (and committed): forget it here, then tell the other processes.
        Never raises: the revocation is committed whatever happens to the message."""
        self.cache.invalidate()
        if self.url is None:
            return
        try:
            if self._publisher is None:
                import redis

                self._publisher = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
            acks = f"{self.channel}:ack:{secrets.token_hex(8)}"
            receivers = self._publisher.publish(self.channel, json.dumps({"key_id": key_id, "ack": acks}))
            acked = self._await_acks(acks, int(receivers))
        except Exception as exc:
            log.warning(
                "could not announce the revocation of API key %s (%s); API processes subscribed "
                "meanwhile may accept it for up to %.0f s",
                key_id,
                type(exc).__name__,
                AUTH_CACHE_SECONDS,
            )
            return
        if acked < receivers:
            log.warning(
                "%d of %d API processes did not acknowledge the revocation of API key %s within %.0f s; "
                "they drop it when they read the message",
                receivers - acked,
                receivers,
                key_id,
                ACK_TIMEOUT_SECONDS,
            )

    def _await_acks(self, acks: str, receivers: int) -> int:
        """Wait for `receivers` acknowledgements on list `acks`; how many came."""
        deadline = time.monotonic() + ACK_TIMEOUT_SECONDS
        acked = 0
        try:
            while acked < receivers:
                left = deadline - time.monotonic()
                if left <= 0 or self._publisher.blpop([acks], timeout=left) is None:
                    break
                acked += 1
        finally:
            self._publisher.delete(acks)
        return acked

    async def _follow(self) -> None:
        """Subscribe, and keep the cache trusted exactly while subscribed; reconnect forever."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        assert self.url is not None
        reported = False  # one warning per outage
        try:
            while True:
                # No silent retries inside the client: a lost connection must reach us as an error.
                client = aioredis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=2,
                    retry=Retry(NoBackoff(), 0),
                    client_name=self.client_name,
                )
                try:
                    async with client.pubsub() as pubsub:
                        await pubsub.subscribe(self.channel)
                        await self._receive(pubsub, client)
                except Exception as exc:
                    if self.cache.trusted or not reported:
                        log.warning(
                            "auth revocation channel unavailable (%s): API keys are checked against "
                            "the database on every request until it is back",
                            type(exc).__name__,
                        )
                        reported = True
                finally:
                    self._distrust_if_current()
                    with contextlib.suppress(Exception):
                        await client.aclose()
                await asyncio.sleep(RETRY_SECONDS)
        finally:
            self._distrust_if_current()

    def _distrust_if_current(self) -> None:
        # A listener replaced by one on another event loop (listen()) must not distrust the cache
        # the new one may already have subscribed for.
        if self._task is asyncio.current_task():
            self.cache.distrust()

    async def _receive(self, pubsub: Any, client: Any) -> None:
        """Follow the subscription (`client` sends the acknowledgements on a connection of its own)."""
        loop = asyncio.get_running_loop()
        last_heard = last_ping = loop.time()
        while True:
            message = await pubsub.get_message(timeout=PING_SECONDS)
            now = loop.time()
            if message is not None:
                last_heard = now
                if message["type"] == "subscribe":
                    self.cache.trust()
                elif message["type"] == "message":
                    self.cache.invalidate()
                    await self._acknowledge(client, message["data"])
            if now - last_heard > STALE_SECONDS:
                raise ConnectionError(f"no answer from Redis for {STALE_SECONDS:.0f} s")
            if now - last_ping >= PING_SECONDS:
                await pubsub.ping()
                last_ping = now

    @staticmethod
    async def _acknowledge(client: Any, data: bytes) -> None:
        try:
            acks = json.loads(data)["ack"]
        except (ValueError, KeyError, TypeError):
            return
        pipe = client.pipeline(transaction=False)
        pipe.rpush(acks, b"1")
        pipe.expire(acks, 10)  # a late acknowledgement must not stay behind
        await asyncio.wait_for(pipe.execute(), ACK_TIMEOUT_SECONDS)


def revoke_key(
    session: Session, jobs: JobQueue, revocations: Revocations, principal: Principal, key_id: str
) -> ApiKey:
    """Revoke key `key_id` (admins only; audited) and announce it once the transaction commits."""
    row = revoke_api_key(session, principal, key_id)
    jobs.after_commit(partial(revocations.announce, row.id))
    return row
