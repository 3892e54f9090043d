"""API keys: every /v1 route needs one; keys are stored hashed."""

from __future__ import annotations

import hashlib
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db.models import ApiKey
from tests.api.conftest import KeyFor


def v1_operations(app: FastAPI) -> list[tuple[str, str]]:
    ops = []
    for path, methods in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            concrete = re.sub(r"\{[^}]+\}", "x_1", path)
            ops += [(method.upper(), concrete) for method in methods]
    return ops


def test_there_are_v1_routes_to_check(app: FastAPI) -> None:
    ops = v1_operations(app)
    assert ("GET", "/v1/datasets") in ops and ("POST", "/v1/models") in ops


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer mbpo_000000000000_wrong"},
        {"Authorization": "Bearer not-even-the-format"},
        {"Authorization": "Basic YWxpY2U6cGFzcw=="},
    ],
    ids=["none", "wrong", "garbage", "basic"],
)
def test_every_v1_route_is_401_without_a_valid_key(
    app: FastAPI, client: TestClient, alice: KeyFor, headers: dict[str, str]
) -> None:
    for method, path in v1_operations(app):
        resp = client.request(method, path, headers=headers)
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "Bearer"


def test_a_key_with_a_correct_prefix_but_wrong_secret_is_refused(client: TestClient, alice: KeyFor) -> None:
    scheme, prefix, _secret = alice.key.split("_", 2)
    forged = f"{scheme}_{prefix}_" + "A" * 43
    assert client.get("/v1/datasets", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert client.get("/v1/datasets", headers=alice.headers).status_code == 200


def test_keys_are_stored_as_sha256_only(session_factory: sessionmaker[Session], alice: KeyFor) -> None:
    with session_factory() as session:
        rows = session.scalars(select(ApiKey)).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.key_hash == hashlib.sha256(alice.key.encode()).hexdigest()
    for value in (row.key_hash, row.prefix, row.name):
        assert alice.key not in value
    assert alice.key.split("_", 2)[2] not in row.key_hash  # the secret may itself contain "_"


def test_revoked_key_is_refused(
    client: TestClient, alice: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    from infra.db.base import utcnow

    with session_factory.begin() as session:
        session.scalars(select(ApiKey)).one().revoked_at = utcnow()
    assert client.get("/v1/datasets", headers=alice.headers).status_code == 401


def test_health_routes_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200


def test_a_key_revoked_behind_the_apis_back_works_at_most_the_cache_ttl(
    app: FastAPI, client: TestClient, alice: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    """Revocations through the API are announced (tests/api/test_revocation.py); a change made
    directly in the database is noticed when the cached entry expires."""
    import time

    from infra.db.base import utcnow
    from tests.helpers import services

    cache = app.state.auth_cache
    cache.ttl = 0.5

    def cached() -> bool:
        assert client.get("/v1/datasets", headers=alice.headers).status_code == 200
        return cache.get(alice.key) is not None

    services.wait_for(cached, timeout=10, interval=0.05, what="the revocation listener")
    with session_factory.begin() as session:
        session.scalars(select(ApiKey)).one().revoked_at = utcnow()
    # Trusted from the cache for at most ttl seconds, then the database says no.
    assert client.get("/v1/datasets", headers=alice.headers).status_code == 200
    time.sleep(0.6)
    assert client.get("/v1/datasets", headers=alice.headers).status_code == 401

    cache.ttl = 0  # disabled: every request asks the database
    assert client.get("/v1/datasets", headers=alice.headers).status_code == 401
