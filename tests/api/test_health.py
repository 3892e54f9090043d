"""/readyz reports the database, the broker and the free disk space honestly (the database down:
tests/api/test_outages.py)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.settings import Settings


def test_ready_with_postgres_and_redis(client: TestClient) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"database": "ok", "broker": "ok", "disk": "ok"}
    assert resp.json()["embedded"] is False


def test_not_ready_when_the_broker_is_unreachable(app: FastAPI, settings: Settings) -> None:
    app.state.settings = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(app) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["error"]["code"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"] != "ok"


def test_not_ready_when_the_disk_is_fuller_than_allowed(app: FastAPI, settings: Settings) -> None:
    app.state.settings = settings.model_copy(update={"min_free_disk_bytes": 2**62})  # beyond any disk
    with TestClient(app) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["error"]["code"] == "not_ready" and body["error"]["message"].startswith("disk: ")
    assert "MBPO_MIN_FREE_DISK_BYTES" in body["checks"]["disk"]
    assert body["checks"]["database"] == body["checks"]["broker"] == "ok"
