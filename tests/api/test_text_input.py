"""Text the database cannot store (a NUL character, an unpaired surrogate) is a 4xx naming where it
was, wherever a request carries it: path, query, header, JSON body, multipart field, cursor."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.pagination import encode_cursor
from api.text_input import storable, unstorable_json_field
from tests.api.conftest import KeyFor


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            b'{"name": "ok", "config": {"train": {"lora": {"target_modules": ["q", "v\\u0000"]}}}}',
            "config.train.lora.target_modules.1",
        ),
        (b'{"a\\u0000": 1}', "a\x00"),
        (b'[{"x": "\\ud800"}]', "0.x"),
        (b'"\\uDFFF"', "body"),
        (json.dumps({"m": "a\x00b"}).encode("utf-16"), "m"),  # JSON in UTF-16 is JSON too
        (b'{"a": "\\ud83d\\ude00 \\u00e9"}', None),  # a surrogate pair is one character
        (b'{"a": "\\\\u0000"}', None),  # an escaped backslash, then the letters u0000
        (b'{"a": "\\u0000', None),  # not JSON: the route reports that
        (b'{"a": "plain"}', None),
    ],
)
def test_the_first_unstorable_string_of_a_json_body_is_named(body: bytes, field: str | None) -> None:
    assert unstorable_json_field(body) == field


def test_storable() -> None:
    assert storable("plain") and storable("café 😀")
    assert not storable("a\x00") and not storable("\ud800") and not storable("é\x00")


def test_requests_carrying_unstorable_text_are_a_422_naming_it(client: TestClient, alice: KeyFor) -> None:
    h = alice.headers

    def refused(resp, field: str) -> None:  # type: ignore[no-untyped-def]
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"] == {
            "code": "validation_error",
            "message": f"{field}: text must not contain NUL characters or unpaired surrogates",
            "field": field,
        }

    refused(client.get("/v1/runs/run_%00", headers=h), "run_id")
    refused(client.get("/v1/models/model:a%00b", headers=h), "model_id")
    refused(client.get("/v1/datasets?cursor=%00", headers=h), "cursor")
    body = {"name": "r\x00", "base_model_id": "m", "offline_dataset_id": "d", "online_dataset_id": "d"}
    refused(client.post("/v1/runs", json=body, headers=h), "name")
    refused(
        client.post("/v1/runs", json={**body, "name": "r"}, headers={**h, "Idempotency-Key": "k\x00"}),
        "idempotency-key",
    )
    lone = b'{"name": "\\udc00", "path": "/x"}'
    refused(
        client.post("/v1/models", content=lone, headers={**h, "Content-Type": "application/json"}), "name"
    )
    files = {"manifest": ("m.jsonl", b"{}\n"), "images": ("i.zip", b"PK")}
    refused(client.post("/v1/datasets", data={"name": "d\x00"}, files=files, headers=h), "name")
    # A cursor is checked after decoding: its id goes into a query.
    bad_cursor = client.get("/v1/runs", params={"cursor": encode_cursor("run\x00")}, headers=h)
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["code"] == "invalid_cursor"


def test_chat_answers_unstorable_text_in_openai_shape(client: TestClient, alice: KeyFor) -> None:
    body = {"model": "model:x", "messages": [{"role": "user", "content": "hi\x00"}]}
    resp = client.post("/v1/chat/completions", json=body, headers=alice.headers)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "validation_error",
        "messages.0.content",
        "invalid_request_error",
    )


def test_text_is_checked_after_authentication(client: TestClient) -> None:
    assert client.get("/v1/runs/run_%00").status_code == 401
