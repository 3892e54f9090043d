"""/v1/spot-checks without a worker: validation before anything is sent, owner-only history with
cursor pagination. (Answers from a real worker: tests/api/test_chat_e2e.py.)"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from infra.db.models import SpotCheckRecord
from tests.api.conftest import KeyFor
from tests.helpers.inference import data_url, png_bytes


def _stored(factory: sessionmaker[Session], owner: KeyFor, question: str) -> str:
    result = {
        "model": "model:mdl_x",
        "answer": "yes",
        "null_answer": "yes",
        "answer_iig": 0.01,
        "null_answer_iig": 0.01,
        "same_as_prior": True,
        "seconds": 0.1,
    }
    with factory.begin() as session:
        record = SpotCheckRecord(
            owner_id=owner.user_id,
            question=question,
            null_image="gray",
            max_tokens=16,
            image_sha256="0" * 64,
            image_width=56,
            image_height=56,
            thumbnail="data:image/jpeg;base64,",
            models=["model:mdl_x", "model:mdl_y"],
            results=[result, {**result, "model": "model:mdl_y"}],
        )
        session.add(record)
        session.flush()
        return record.id


def test_history_is_per_owner_and_paginated(
    client: TestClient, session_factory: sessionmaker[Session], alice: KeyFor, bob: KeyFor, admin: KeyFor
) -> None:
    ids = [_stored(session_factory, alice, f"q{i}") for i in range(3)]
    first = client.get("/v1/spot-checks?limit=2", headers=alice.headers).json()
    assert [c["id"] for c in first["data"]] == ids[::-1][:2]
    rest = client.get(f"/v1/spot-checks?limit=2&cursor={first['next_cursor']}", headers=alice.headers).json()
    assert [c["id"] for c in rest["data"]] == [ids[0]] and rest["next_cursor"] is None
    one = client.get(f"/v1/spot-checks/{ids[0]}", headers=alice.headers).json()
    assert one["question"] == "q0" and [r["model"] for r in one["results"]] == ["model:mdl_x", "model:mdl_y"]
    assert client.get("/v1/spot-checks", headers=bob.headers).json()["data"] == []
    assert client.get(f"/v1/spot-checks/{ids[0]}", headers=bob.headers).status_code == 404
    assert client.get(f"/v1/spot-checks/{ids[0]}", headers=admin.headers).status_code == 200


def _post(client: TestClient, key: KeyFor, **body: Any) -> Any:
    payload = {
        "image": data_url(png_bytes()),
        "question": "is there a red circle",
        "models": ["model:a", "model:b"],
    }
    return client.post("/v1/spot-checks", json={**payload, **body}, headers=key.headers)


def test_bad_spot_checks_are_refused_before_any_work(client: TestClient, alice: KeyFor) -> None:
    resp = _post(client, alice, models=["model:mdl_only"])
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "models"
    resp = _post(client, alice, models=["model:mdl_a", "model:mdl_a"])
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "too_few_models"
    resp = _post(client, alice, models=["model:mdl_a", "model:mdl_b"])
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    assert resp.json()["error"]["field"] == "models.0"
    resp = _post(client, alice, null_image="black")
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "null_image"
    assert _post(client, alice, max_tokens=0).status_code == 422
