"""/readyz reports the database and broker honestly."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.settings import Settings


def test_ready_with_postgres_and_redis(client: TestClient) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"database": "ok", "broker": "ok"}
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
