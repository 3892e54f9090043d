"""The admin UI over HTTP (no browser): login into a session cookie, CSRF, security headers,
escaping, admin-only pages and revocation. The browser tests live in tests/ui."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.admin.routes import _safe_next
from api.auth.service import authenticate, revoke_api_key
from api.auth.sessions import issue_session, read_session
from infra.db.models import Dataset
from tests.api.conftest import KeyFor
from tests.helpers import datasets as ds

XSS = "<script>alert(1)</script>"


def _login(client: TestClient, key: str) -> str:
    page = client.get("/admin/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    resp = client.post(
        "/admin/login",
        data={"api_key": key, "csrf_token": token[1], "next": "/admin/datasets"},
        follow_redirects=False,
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/admin/datasets"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and key not in cookie
    page = client.get("/admin/datasets")
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert meta is not None
    return meta[1]


def test_pages_need_a_session_and_login_needs_its_token(client: TestClient, alice: KeyFor) -> None:
    resp = client.get("/admin/runs", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/admin/login?next=/admin/runs"
    no_token = client.post("/admin/login", data={"api_key": alice.key}, follow_redirects=False)
    assert no_token.status_code == 403
    page = client.get("/admin/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    wrong = client.post("/admin/login", data={"api_key": "mbpo_x_y", "csrf_token": token[1]})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "mbpo_session" not in client.cookies


def test_cookie_writes_need_the_csrf_token_bearer_writes_do_not(
    client: TestClient, alice: KeyFor, data_root: Path
) -> None:
    csrf = _login(client, alice.key)
    path = str(ds.make_dataset_dir(data_root / "shapes"))
    body = {"name": "shapes", "path": path}
    assert client.get("/v1/datasets").status_code == 200  # reads with the cookie alone
    refused = client.post("/v1/datasets", json=body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert client.post("/v1/datasets", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert client.post("/v1/datasets", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    # A bearer key is not ambient authority: no CSRF token needed (and the cookie is ignored).
    bare = TestClient(client.app)
    assert bare.post("/v1/datasets", json=body, headers=alice.headers).status_code == 201
    assert client.post("/admin/logout", data={}).status_code == 403
    assert client.post("/admin/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303


def test_headers_and_escaping(
    client: TestClient, alice: KeyFor, session_factory: sessionmaker[Session], data_root: Path
) -> None:
    _login(client, alice.key)
    with session_factory.begin() as session:
        session.add(
            Dataset(
                owner_id=alice.user_id,
                name=XSS,
                source="path",
                root_path=str(data_root),
                manifest_name="manifest.jsonl",
                status="ready",
            )
        )
    page = client.get("/admin/datasets")
    assert XSS not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text.replace('<script src="/admin/static/', "")  # no inline scripts
    assert "content-security-policy" not in client.get("/healthz").headers  # only the UI's pages


def test_keys_page_is_for_admins_and_revocation_ends_sessions(
    client: TestClient, alice: KeyFor, admin: KeyFor, session_factory: sessionmaker[Session]
) -> None:
    _login(client, alice.key)
    assert client.get("/admin/keys").status_code == 403
    admin_client = TestClient(client.app)
    csrf = _login(admin_client, admin.key)
    created = admin_client.post("/admin/keys", data={"csrf_token": csrf, "user": XSS, "name": "k"})
    assert created.status_code == 200 and "&lt;script&gt;" in created.text and XSS not in created.text
    with session_factory.begin() as session:
        admin_principal = authenticate(session, admin.key)
        principal = authenticate(session, alice.key)
        assert admin_principal is not None and principal is not None
        revoke_api_key(session, admin_principal, principal.key_id)
    resp = client.get("/admin/datasets", follow_redirects=False)
    assert resp.status_code == 303  # the revoked key's session is over
    assert client.get("/v1/datasets").status_code == 401


def test_session_tokens_and_redirects() -> None:
    secret = b"s" * 32
    session, cookie = issue_session(secret, "key_1", now=1000)
    assert read_session(secret, cookie, now=1001) == session
    assert read_session(secret, cookie, now=10**10) is None  # expired
    assert read_session(b"t" * 32, cookie, now=1001) is None  # other secret
    forged = cookie.replace("key_1", "key_2", 1)
    assert read_session(secret, forged, now=1001) is None
    assert session.csrf_token(secret) != issue_session(secret, "key_1", now=1000)[0].csrf_token(secret)
    for bad in ("//evil.example/x", "https://evil.example", "/v1/runs", "/admin\\@evil", None):
        assert _safe_next(bad) == "/admin/runs"
    assert _safe_next("/admin/datasets/ds_1") == "/admin/datasets/ds_1"


def test_every_config_field_gets_a_typed_form_input() -> None:
    """The launch form sends numbers and booleans as JSON numbers and booleans (the config refuses
    "16" for an int): every field of MBPOConfig maps to a typed input, none to free text."""
    from api.admin.config_form import config_sections

    kinds = {f.path: f.kind for section in config_sections() for f in section.fields}
    assert "text" not in kinds.values(), [p for p, k in kinds.items() if k == "text"]
    assert kinds["mining.limit"] == "int" and kinds["iig.min_iig"] == "float"
    assert kinds["train.lora.enabled"] == "bool"
