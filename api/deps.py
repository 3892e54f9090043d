"""Request dependencies as `Annotated` aliases: settings, the session (the one commit point), the
read-only reader, the after-commit job queue and the authenticated principal."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.auth.cache import AuthCache
from api.auth.revocation import Revocations
from api.auth.service import Principal, authenticate
from api.auth.sessions import (
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    csrf_matches,
    load_secret,
    read_session,
    session_principal,
)
from api.errors import Forbidden, Unauthorized
from api.limits import database_slot, read_slots
from infra.jobs import JobQueue, get_celery
from infra.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


# Trivial dependencies are async: a sync one costs a threadpool round trip on every request.
async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


async def get_job_queue() -> JobQueue:
    return JobQueue()


JobQueueDep = Annotated[JobQueue, Depends(get_job_queue)]


def get_session(
    settings: SettingsDep,
    jobs: JobQueueDep,
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
    _slot: Annotated[None, Depends(database_slot, scope="function")],
) -> Iterator[Session]:
    """The only place that commits. Jobs are written to the outbox in the request's transaction
    and sent after the commit succeeded, never before; one the broker refused stays in the outbox
    (the relay sends it), so the request still succeeds."""
    session = factory()
    jobs.bind(session)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        jobs.discard()
        raise
    finally:
        session.close()
    if jobs.pending:
        jobs.send(get_celery(settings))


# scope="function": commit (and enqueue) before the response is sent, so a client never sees a
# 201 for something that then fails to commit, nor reads before the commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


class Reader:
    """Read-only database work of a request, in one thread hop: `await read(work)` takes a
    read slot (api.limits), then runs `work(session)` in a worker thread with a fresh autocommit
    session (infra.db.session.make_read_session_factory: no BEGIN or ROLLBACK round trips; never
    write with it), and closes it before returning what `work` returned. Build the response inside
    `work`, while the session is open.

    A read route is `async def` and awaits its reader, instead of a sync route on `SessionDep`: that
    costs four thread hops (session setup, endpoint, response validation, session teardown) and
    a commit round trip for nothing; under load the hops, not the query, were most of a read.
    Writes go through `SessionDep`, the one commit point."""

    def __init__(self, factory: sessionmaker[Session], slots: anyio.Semaphore):
        self._factory = factory
        self._slots = slots

    async def __call__(self, work: Callable[[Session], T]) -> T:
        async with self._slots:
            return await anyio.to_thread.run_sync(self._run, work)

    def _run(self, work: Callable[[Session], T]) -> T:
        with self._factory() as session:
            return work(session)


async def get_read_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    return factory


async def get_reader(
    request: Request, factory: Annotated[sessionmaker[Session], Depends(get_read_session_factory)]
) -> Reader:
    return Reader(factory, read_slots(request))


ReaderDep = Annotated[Reader, Depends(get_reader)]

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer mbpo_...`")


async def get_session_secret(request: Request, settings: SettingsDep) -> bytes:
    """The key signing browser sessions and CSRF tokens, loaded once per app."""
    secret: bytes | None = getattr(request.app.state, "session_secret", None)
    if secret is None:
        secret = request.app.state.session_secret = load_secret(settings)
    return secret


SessionSecretDep = Annotated[bytes, Depends(get_session_secret)]


async def get_principal(
    request: Request,
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    secret: SessionSecretDep,
) -> Principal:
    """Authenticate in a short transaction of its own (its only write is the coarse last-used
    time), so the request's session holds no connection until the route needs the database:
    a slow upload streams without keeping a connection idle in a transaction. A key verified in
    the last seconds (the auth cache, emptied whenever a key is revoked: api.auth.revocation) costs
    no database work and no threadpool round trip.

    Without an Authorization header, the admin UI's session cookie is accepted; a state-changing
    request made with it must also carry the session's CSRF token (403 otherwise)."""
    if credentials is None:
        return await anyio.to_thread.run_sync(_browser_principal, request, factory, secret)
    if credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    key = credentials.credentials
    cache: AuthCache = request.app.state.auth_cache
    request.app.state.auth_revocations.listen()
    principal = cache.get(key)
    if principal is not None:
        return principal
    generation = cache.generation  # a revocation announced during the lookup voids its answer

    def lookup() -> Principal | None:
        with factory.begin() as session:
            return authenticate(session, key)

    principal = await anyio.to_thread.run_sync(lookup)
    if principal is None:
        raise Unauthorized()
    cache.put(key, principal, generation)
    return principal


def _browser_principal(request: Request, factory: sessionmaker[Session], secret: bytes) -> Principal:
    browser = read_session(secret, request.cookies.get(SESSION_COOKIE))
    if browser is None:
        raise Unauthorized()
    if request.method not in SAFE_METHODS and not csrf_matches(
        secret, browser, request.headers.get(CSRF_HEADER)
    ):
        raise Forbidden("missing or invalid CSRF token", code="csrf_failed")
    with factory.begin() as session:
        principal = session_principal(session, browser)
    if principal is None:
        raise Unauthorized()
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal, scope="function")]


async def get_revocations(request: Request) -> Revocations:
    revocations: Revocations = request.app.state.auth_revocations
    return revocations


RevocationsDep = Annotated[Revocations, Depends(get_revocations)]
