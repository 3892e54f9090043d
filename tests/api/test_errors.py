"""Errors as the OpenAPI schema documents them: every /v1 operation declares the errors it can
answer with the service's error body (OpenAI's under /v1/chat/), none with FastAPI's own validation
body; a 405 names every method of the path; an unparseable body is a 400 in the route's shape.
(tests/api/test_schemathesis.py checks the schema against the running service.)"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.conftest import KeyFor


def _body_schema(response: dict[str, Any]) -> str:
    return str(response["content"]["application/json"]["schema"]["$ref"]).rsplit("/", 1)[-1]


def test_every_v1_operation_documents_its_errors_with_the_error_body(app: FastAPI) -> None:
    schema = app.openapi()
    operations = [
        (f"{method.upper()} {path}", op)
        for path, ops in schema["paths"].items()
        if path.startswith("/v1/")
        for method, op in ops.items()
    ]
    assert len(operations) > 20
    for name, op in operations:
        responses = op["responses"]
        errors = {status: r for status, r in responses.items() if status >= "400"}
        openai = name.startswith("POST /v1/chat/")
        expected = {"400", "401", "403", "503"} if openai else {"401", "403", "422", "503"}
        assert expected <= errors.keys(), name
        model = "OpenAIErrorResponse" if openai else "ErrorResponse"
        assert {status: _body_schema(r) for status, r in errors.items()} == dict.fromkeys(errors, model), name
        if "{" in name:  # a route naming a resource can miss it
            assert "404" in errors, name
        if name.startswith("POST"):  # any POST can send a body over the cap
            assert "413" in errors, name
        if "requestBody" in op:  # a body that cannot be parsed
            assert "400" in errors, name
    assert "HTTPValidationError" not in str(schema)
    assert "422" not in schema["paths"]["/v1/chat/completions"]["post"]["responses"]


def test_a_405_names_every_method_of_the_path(client: TestClient, alice: KeyFor) -> None:
    resp = client.request("OPTIONS", "/v1/runs", headers=alice.headers)
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, POST"
    assert resp.json()["error"]["code"] == "method_not_allowed"
    assert client.delete("/v1/runs/run_x", headers=alice.headers).headers["allow"] == "GET"
    assert client.get("/v1/runs/run_x/cancel", headers=alice.headers).headers["allow"] == "POST"


def test_an_unparseable_body_is_a_400_in_the_routes_shape(client: TestClient, alice: KeyFor) -> None:
    headers = {**alice.headers, "Content-Type": "application/json"}
    ours = client.post("/v1/models", content=b'{"name": "\xff"}', headers=headers)
    assert ours.status_code == 400 and ours.json()["error"]["code"] == "bad_request"
    chat = client.post("/v1/chat/completions", content=b'{"model": "\xff"}', headers=headers)
    assert chat.status_code == 400
    assert (
        chat.json()["error"]["code"] == "bad_request"
        and chat.json()["error"]["type"] == "invalid_request_error"
    )
