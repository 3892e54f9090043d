"""The audit log: keys created and revoked (REST and admin UI), runs cancelled and resumed by
anyone, admin logins; read by admins only through GET /v1/audit (cursor-paginated) and the
/admin/audit page; never a secret in it. Also /v1/keys, the REST side of key management."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.pagination import encode_cursor
from infra.audit import AuditAction, record_audit
from infra.db.models import AuditEntry, BaseModelRecord
from infra.runs.lifecycle import RunStatus
from tests.api.conftest import KeyFor
from tests.helpers.rows import make_run


def _login(client: TestClient, key: str) -> str:
    """Sign in to the admin UI; returns the session's CSRF token."""
    page = client.get("/admin/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    resp = client.post("/admin/login", data={"api_key": key, "csrf_token": token[1]}, follow_redirects=False)
    assert resp.status_code == 303
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)">', client.get("/admin/runs").text)
    assert meta is not None
    return meta[1]


def _run(factory: sessionmaker[Session], owner: KeyFor, **values: Any) -> str:
    """A run of `owner` (queued unless `values` say otherwise)."""
    with factory.begin() as session:
        model = BaseModelRecord(
            owner_id=owner.user_id,
            name="m",
            path="/m",
            family="qwen2_vl",
            model_type="qwen2_vl",
            param_count=1,
        )
        session.add(model)
        session.flush()
        model_id = model.id
    return make_run(factory, owner.user_id, model_id, **values)


def _entries(client: TestClient, admin: KeyFor, **params: Any) -> list[dict[str, Any]]:
    resp = client.get("/v1/audit", params=params, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


def test_admin_actions_are_recorded_with_actor_action_and_target(
    client: TestClient, alice: KeyFor, admin: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    created = client.post("/v1/keys", json={"user": "carol", "name": "laptop"}, headers=admin.headers)
    assert created.status_code == 201, created.text
    carol = created.json()
    assert carol["key"].startswith(f"mbpo_{carol['prefix']}_") and carol["user"] == "carol"
    revoked = client.post(f"/v1/keys/{carol['id']}/revoke", headers=admin.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert client.get("/v1/datasets", headers={"Authorization": f"Bearer {carol['key']}"}).status_code == 401
    run_id = _run(session_factory, alice)
    cancel = client.post(f"/v1/runs/{run_id}/cancel", headers=alice.headers)  # by its owner
    assert cancel.json()["status"] == "cancelled"
    assert client.post(f"/v1/runs/{run_id}/resume", headers=admin.headers).status_code == 200  # an admin
    _login(TestClient(client.app), alice.key)  # not an admin: not recorded
    _login(TestClient(client.app), admin.key)

    entries = _entries(client, admin)
    summary = [(e["action"], e["actor_user"], e["target_kind"], e["target_id"]) for e in entries]
    admin_key_id = entries[0]["actor_key_id"]
    assert summary[:5] == [
        ("admin.login", "root", "api_key", admin_key_id),
        ("run.resume", "root", "run", run_id),
        ("run.cancel", "alice", "run", run_id),
        ("key.revoke", "root", "api_key", carol["id"]),
        ("key.create", "root", "api_key", carol["id"]),
    ]
    login, resume, cancel_entry, revoke, create = entries[:5]
    assert resume["detail"] == {"from": "cancelled", "to": "queued", "owner_id": alice.user_id}
    assert cancel_entry["detail"] == {"from": "queued", "to": "cancelled", "owner_id": alice.user_id}
    assert cancel_entry["actor_user_id"] == alice.user_id and cancel_entry["actor_key_id"] != admin_key_id
    assert create["detail"] == {"prefix": carol["prefix"], "name": "laptop", "user": "carol", "admin": False}
    assert revoke["detail"] == {"prefix": carol["prefix"], "name": "laptop", "user": "carol"}
    assert login["detail"]["client"] == "testclient"
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    # The fixtures' keys were made without the API (as `mbpo keys create` does): no actor.
    assert {(e["action"], e["actor_user_id"]) for e in entries[5:]} == {("key.create", None)}

    # Never a secret: no key in clear anywhere in the log.
    with session_factory() as session:
        stored = json.dumps([[e.action, e.target_id, e.detail] for e in session.scalars(select(AuditEntry))])
    for secret in (carol["key"], alice.key, admin.key):
        assert secret not in stored and secret.split("_", 2)[2] not in stored


def test_the_admin_ui_records_key_creation_and_revocation(
    client: TestClient, admin: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    csrf = _login(client, admin.key)
    page = client.post("/admin/keys", data={"csrf_token": csrf, "user": "dora", "name": "ci"})
    assert page.status_code == 200
    new_key = re.search(r'id="new-key" value="([^"]+)"', page.text)
    assert new_key is not None
    entries = _entries(client, admin, limit=1)
    assert entries[0]["action"] == "key.create" and entries[0]["detail"]["user"] == "dora"
    key_id = entries[0]["target_id"]
    resp = client.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": csrf}, follow_redirects=False)
    assert resp.status_code == 303
    revoke = _entries(client, admin, limit=1)[0]
    assert (revoke["action"], revoke["target_id"], revoke["actor_user"]) == ("key.revoke", key_id, "root")
    assert client.get("/v1/datasets", headers={"Authorization": f"Bearer {new_key[1]}"}).status_code == 401


def test_only_admins_read_the_log_and_manage_keys_and_refused_actions_leave_no_entry(
    client: TestClient, alice: KeyFor, admin: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    for method, path, body in [
        ("GET", "/v1/audit", None),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"user": "mallory"}),
        ("POST", "/v1/keys/key_x/revoke", None),
    ]:
        resp = client.request(method, path, json=body, headers=alice.headers)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", (method, path)
    before = len(_entries(client, admin, limit=200))
    run_id = _run(session_factory, alice)
    assert client.post(f"/v1/runs/{run_id}/resume", headers=alice.headers).status_code == 409  # not resumable
    keys = client.get("/v1/keys", headers=admin.headers).json()["data"]
    own = next(k for k in keys if k["user"] == "root")
    assert client.post(f"/v1/keys/{own['id']}/revoke", headers=admin.headers).status_code == 409  # itself
    assert client.post("/v1/keys/key_nope/revoke", headers=admin.headers).status_code == 404
    bad = client.post("/v1/keys", json={"user": " "}, headers=admin.headers)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "user"
    bad = client.post("/v1/keys", json={"user": "x", "role": "god"}, headers=admin.headers)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "role"
    bad = client.post("/v1/keys", json={"user": "x", "admin": 1}, headers=admin.headers)  # strictly a bool
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "admin"
    assert len(_entries(client, admin, limit=200)) == before
    # Cancelling a run that is already being cancelled is no new action either.
    held = _run(session_factory, alice, status=RunStatus.cancelling)
    assert client.post(f"/v1/runs/{held}/cancel", headers=alice.headers).json()["status"] == "cancelling"
    assert len(_entries(client, admin, limit=200)) == before


def test_the_log_is_paginated_newest_first(
    client: TestClient, admin: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    with session_factory.begin() as session:
        for i in range(7):
            record_audit(
                session,
                AuditAction.run_cancel,
                target_kind="run",
                target_id=f"run_{i}",
                actor_user_id=None,
                actor_key_id=None,
            )
    total = len(_entries(client, admin, limit=200))
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/audit", params=params, headers=admin.headers).json()
        assert len(page["data"]) <= 3
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == total and seen == sorted(set(seen), reverse=True)
    for bad in ("not-a-cursor", encode_cursor("run_1"), encode_cursor("9" * 22)):
        resp = client.get("/v1/audit", params={"cursor": bad}, headers=admin.headers)
        assert resp.status_code == 422 and resp.json()["error"]["field"] == "cursor", bad
    assert client.get("/v1/audit", params={"limit": 0}, headers=admin.headers).status_code == 422


def test_the_audit_page_is_for_admins(client: TestClient, alice: KeyFor, admin: KeyFor) -> None:
    _login(client, alice.key)
    assert 'href="/admin/audit"' not in client.get("/admin/runs").text
    assert client.get("/admin/audit").status_code == 403
    admin_client = TestClient(client.app)
    _login(admin_client, admin.key)
    page = admin_client.get("/admin/audit")
    assert page.status_code == 200 and 'href="/admin/audit"' in page.text
    assert "admin.login" in page.text and "root" in page.text and "command line" in page.text
