"""Revocation is effective at once in every API process: two apps share one PostgreSQL database and
one Redis; a key revoked through one is refused by the other on the very next request, although
the other had it in its auth cache (the revoke call returns once every subscribed process has
acknowledged). The cache is distrusted while its Redis subscription is down
(a reset connection, or a silent one that stops answering PINGs), and embedded mode (SQLite, no
Redis) empties the local cache directly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth import revocation
from api.auth.cache import AuthCache
from api.auth.service import Principal, create_api_key
from infra.db.base import utcnow
from infra.db.migrate import upgrade_to_head
from infra.db.models import ApiKey
from infra.db.session import make_engine, make_session_factory
from infra.settings import Settings
from tests.helpers import services


def _key(factory: sessionmaker[Session], user: str, admin: bool = False) -> tuple[str, str]:
    """A new key: (key id, the key)."""
    with factory.begin() as session:
        row, key = create_api_key(session, user_name=user, key_name=user, admin=admin)
        return row.id, key


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _cached(app: FastAPI, key: str) -> bool:
    cache: AuthCache = app.state.auth_cache
    return cache.get(key) is not None


@pytest.fixture
def two_apps(
    committed_db: str, pg_factory: sessionmaker[Session], tmp_path: Path
) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API processes' apps on one database and one Redis, each with its own event loop."""
    services.require_redis()
    prefix = services.broker_prefix()
    settings = Settings(
        env="test",
        home=tmp_path / "home",
        database_url=committed_db,
        broker_url=services.REDIS_URL,
        broker_key_prefix=prefix,
    )
    with ExitStack() as stack:
        clients = [stack.enter_context(TestClient(create_app(settings))) for _ in range(2)]
        yield clients[0], clients[1]
    services.delete_redis_prefix(prefix)


def _subscribed(client: TestClient, key: str) -> None:
    """Authenticate once (which starts the app's revocation listener), then wait until the app
    trusts its cache and has the key in it."""
    app = client.app
    assert isinstance(app, FastAPI)

    def ready() -> bool:
        assert client.get("/v1/datasets", headers=_bearer(key)).status_code == 200
        return _cached(app, key)

    services.wait_for(ready, timeout=10, interval=0.05, what="a subscribed, warm auth cache")


def test_a_key_revoked_through_one_process_is_refused_by_the_other_at_once(
    two_apps: tuple[TestClient, TestClient], pg_factory: sessionmaker[Session]
) -> None:
    one, other = two_apps
    _, admin_key = _key(pg_factory, "root", admin=True)
    for round_ in range(5):  # several times: an announcement that were merely fast would show
        key_id, key = _key(pg_factory, f"alice{round_}")
        _subscribed(one, key)
        _subscribed(other, key)  # the other process serves the key from its cache now
        revoked = one.post(f"/v1/keys/{key_id}/revoke", headers=_bearer(admin_key))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        resp = other.get("/v1/datasets", headers=_bearer(key))
        assert resp.status_code == 401, f"round {round_}: the other process still accepted the key"
        assert one.get("/v1/datasets", headers=_bearer(key)).status_code == 401
    # Other keys keep working (and are cached again).
    _, bob = _key(pg_factory, "bob")
    _subscribed(other, bob)


def test_a_subscriber_that_never_acknowledges_delays_a_revocation_by_the_ack_timeout_only(
    two_apps: tuple[TestClient, TestClient],
    pg_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    one, _ = two_apps
    app = one.app
    assert isinstance(app, FastAPI)
    _, admin_key = _key(pg_factory, "root", admin=True)
    key_id, key = _key(pg_factory, "gina")
    _subscribed(one, key)
    mute = redis.Redis.from_url(services.REDIS_URL).pubsub()  # a stalled API process, say
    try:
        mute.subscribe(app.state.auth_revocations.channel)
        assert mute.get_message(timeout=2) is not None  # the subscription is confirmed
        started = time.monotonic()
        assert one.post(f"/v1/keys/{key_id}/revoke", headers=_bearer(admin_key)).status_code == 200
        waited = time.monotonic() - started
    finally:
        mute.close()
    assert revocation.ACK_TIMEOUT_SECONDS <= waited < revocation.ACK_TIMEOUT_SECONDS + 2
    assert "1 of 2 API processes did not acknowledge" in caplog.text
    assert one.get("/v1/datasets", headers=_bearer(key)).status_code == 401


def test_the_cache_is_not_trusted_while_the_subscription_is_down(
    two_apps: tuple[TestClient, TestClient], pg_factory: sessionmaker[Session]
) -> None:
    one, _ = two_apps
    app = one.app
    assert isinstance(app, FastAPI)
    key_id, key = _key(pg_factory, "carol")
    _subscribed(one, key)
    revocations = app.state.auth_revocations
    admin = redis.Redis.from_url(services.REDIS_URL)
    try:
        ids = [c["id"] for c in admin.client_list() if c.get("name") == revocations.client_name]
        assert ids, "the listener's connection is not named"
        for client_id in ids:
            admin.client_kill_filter(_id=client_id)
    finally:
        admin.close()
    services.wait_for(lambda: not app.state.auth_cache.trusted, timeout=3, interval=0.01, what="distrust")
    # Revoked behind the API's back (no announcement): refused at once all the same, because the
    # cache serves nothing while it cannot hear announcements.
    with pg_factory.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
    assert one.get("/v1/datasets", headers=_bearer(key)).status_code == 401
    # The listener reconnects and the cache is trusted (and used) again.
    _, dave = _key(pg_factory, "dave")
    _subscribed(one, dave)


def test_the_listener_follows_the_app_to_a_new_event_loop(
    committed_db: str, pg_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """An app served by one event loop, then another (a TestClient per block): the listener is
    started again on the new loop and the cache is trusted again; the old one does not undo it."""
    services.require_redis()
    prefix = services.broker_prefix()
    settings = Settings(
        env="test",
        home=tmp_path,
        database_url=committed_db,
        broker_url=services.REDIS_URL,
        broker_key_prefix=prefix,
    )
    app = create_app(settings)
    _, key = _key(pg_factory, "frank")
    try:
        for _ in range(2):
            with TestClient(app) as client:
                _subscribed(client, key)
                time.sleep(0.2)  # still trusted a moment later
                assert _cached(app, key)
    finally:
        services.delete_redis_prefix(prefix)


def test_a_lookup_overtaken_by_a_revocation_does_not_cache_its_answer() -> None:
    cache = AuthCache()
    principal = Principal(user_id="usr_1", key_id="key_1", is_admin=False)
    generation = cache.generation  # read before the database lookup
    cache.invalidate()  # a revocation announced while the lookup ran
    cache.put("mbpo_k_s", principal, generation)
    assert cache.get("mbpo_k_s") is None
    cache.put("mbpo_k_s", principal, cache.generation)
    assert cache.get("mbpo_k_s") == principal
    cache.distrust()
    assert cache.get("mbpo_k_s") is None
    cache.put("mbpo_k_s", principal, cache.generation)
    assert cache.get("mbpo_k_s") is None  # nothing is stored while distrusted
    cache.trust()
    assert cache.get("mbpo_k_s") is None  # trusted again, but empty: announcements were missed


def test_embedded_mode_revokes_in_its_own_cache(tmp_path: Path) -> None:
    settings = Settings(env="test", home=tmp_path / "home")
    assert settings.embedded
    settings.home_dir.mkdir(parents=True)
    upgrade_to_head(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    factory = make_session_factory(engine)
    _, admin_key = _key(factory, "root", admin=True)
    key_id, key = _key(factory, "erin")
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            assert client.get("/v1/datasets", headers=_bearer(key)).status_code == 200
            assert _cached(app, key)  # no Redis to wait for: trusted from the start
            assert client.post(f"/v1/keys/{key_id}/revoke", headers=_bearer(admin_key)).status_code == 200
            assert not _cached(app, key)
            assert client.get("/v1/datasets", headers=_bearer(key)).status_code == 401
        with factory() as session:
            assert session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key_id)) is not None
    finally:
        engine.dispose()


class _FakePubSub:
    """A subscription that confirms, then answers PINGs only if `answers`."""

    def __init__(self, answers: bool):
        self.answers = answers
        self.pending: list[dict[str, Any]] = [{"type": "subscribe"}]

    async def get_message(self, timeout: float) -> dict[str, Any] | None:
        if self.pending:
            return self.pending.pop(0)
        await asyncio.sleep(timeout)
        return None

    async def ping(self) -> None:
        if self.answers:
            self.pending.append({"type": "pong"})


def test_a_silent_connection_is_given_up_and_the_cache_distrusted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A network loss without a reset (no error, no message): unanswered PINGs end the
    subscription, so the cache is not trusted on a connection that no longer hears revocations."""
    monkeypatch.setattr(revocation, "PING_SECONDS", 0.02)
    monkeypatch.setattr(revocation, "STALE_SECONDS", 0.1)
    settings = Settings(
        env="test", home=tmp_path, database_url="postgresql://x@h/x", broker_url=services.REDIS_URL
    )
    cache = AuthCache()
    revocations = revocation.Revocations(settings, cache)
    assert not cache.trusted  # until subscribed

    async def follow(pubsub: _FakePubSub, seconds: float) -> None:
        await asyncio.wait_for(revocations._receive(pubsub, None), seconds)

    with pytest.raises(TimeoutError):  # PONGs keep coming: it keeps listening, trusted
        asyncio.run(follow(_FakePubSub(answers=True), 0.5))
    assert cache.trusted
    with pytest.raises(ConnectionError):  # silence: given up after STALE_SECONDS
        asyncio.run(follow(_FakePubSub(answers=False), 5))


def test_an_announcement_that_cannot_be_published_still_empties_the_local_cache(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{services.free_port()}/0"
    settings = Settings(env="test", home=tmp_path, database_url="postgresql://x@h/x", broker_url=dead)
    cache = AuthCache()
    revocations = revocation.Revocations(settings, cache)
    cache.trust()
    cache.put("mbpo_k_s", Principal(user_id="usr_1", key_id="key_1", is_admin=False))
    revocations.announce("key_1")  # logs a warning, never raises: the revocation is committed
    assert cache.get("mbpo_k_s") is None
