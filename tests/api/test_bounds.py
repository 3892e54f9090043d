"""Input the schema could accept but the service must bound: JSON bodies over their cap are refused
before they are parsed, integers beyond 64 bits and odd server paths are a 4xx, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from tests.api.conftest import KeyFor

BIG = str(2**70)


def _json(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Content-Type": "application/json"}


def test_a_json_body_over_the_cap_is_refused_before_parsing(
    client: TestClient, alice: KeyFor, settings
) -> None:
    limit = settings.max_json_bytes
    body = b'{"name": "' + b"x" * limit + b'"}'
    declared = client.post("/v1/runs", content=body, headers=_json(alice.headers))
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "'
        for _ in range(limit // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    chunked = client.post("/v1/runs", content=chunks(), headers=_json(alice.headers))
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large"
    # Within the cap the body reaches validation as before.
    small = client.post("/v1/runs", json={"name": "x"}, headers=alice.headers)
    assert small.status_code == 422


def test_chat_bodies_have_room_for_their_images_and_openai_errors(
    client: TestClient, alice: KeyFor, settings
) -> None:
    pad = "a" * (2 * settings.max_json_bytes)  # over the plain cap, far under the image allowance
    body = {"model": "model:none", "messages": [{"role": "user", "content": pad}]}
    resp = client.post("/v1/chat/completions", json=body, headers=alice.headers)
    assert resp.status_code != 413 and resp.status_code < 500
    huge = b'{"model": "' + b"x" * (settings.max_json_bytes + settings.max_image_bytes * 2) + b'"}'
    resp = client.post("/v1/chat/completions", content=huge, headers=_json(alice.headers))
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large" and resp.json()["error"]["type"]


def test_integers_beyond_64_bits_are_a_4xx(client: TestClient, alice: KeyFor) -> None:
    h = alice.headers
    assert client.get(f"/v1/runs/run_x/events?after={BIG}", headers=h).status_code == 422
    assert client.get(f"/v1/runs/run_x/checkpoints/{BIG}/download", headers=h).status_code == 422
    stream = client.get("/v1/runs/run_x/events/stream", headers={**h, "Last-Event-ID": "9" * 20})
    assert stream.status_code == 422 and stream.json()["error"]["field"] == "Last-Event-ID"
    chat = {"model": f"run:run_x@{'9' * 25}", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat, headers=h).status_code == 404
    seeded = {"model": "model:x", "seed": 2**70, "messages": [{"role": "user", "content": "hi"}]}
    resp = client.post("/v1/chat/completions", json=seeded, headers=h)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "seed"


def test_server_paths_with_a_home_reference_or_nul_are_refused(client: TestClient, alice: KeyFor) -> None:
    # A NUL is refused with any other text the database cannot store (api.text_input), before the path
    # is looked at; the route refuses it too (api.paths).
    for path, code in [
        ("~nosuchuser/data", "path_not_allowed"),
        ("~/data", "path_not_allowed"),
        ("/srv/da\x00ta", "validation_error"),
    ]:
        resp = client.post("/v1/datasets", json={"name": "d", "path": path}, headers=alice.headers)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == code, path
        assert resp.json()["error"]["field"] == "path"
        resp = client.post("/v1/models", json={"name": "m", "path": path}, headers=alice.headers)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == code, path
        assert resp.json()["error"]["field"] == "path"
