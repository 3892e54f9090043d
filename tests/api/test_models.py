"""/v1/models: register Hugging Face directories by reading their config only."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import KeyFor
from tests.helpers import datasets as ds

QWEN = {"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}


def test_register_qwen_model(client: TestClient, alice: KeyFor, bob: KeyFor, data_root: Path) -> None:
    model_dir = ds.write_model_dir(data_root / "qwen", QWEN, params=30)
    resp = client.post(
        "/v1/models", json={"name": "tiny qwen", "path": str(model_dir)}, headers=alice.headers
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["family"] == "qwen2_vl" and body["param_count"] == 30
    assert body["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert client.get(f"/v1/models/{body['id']}", headers=alice.headers).json()["name"] == "tiny qwen"
    listing = client.get("/v1/models", headers=alice.headers).json()
    assert listing["object"] == "list"
    assert [(m["id"], m["object"], m["kind"]) for m in listing["data"]] == [
        (f"model:{body['id']}", "model", "base_model")
    ]
    assert client.get("/v1/models", headers=bob.headers).json()["data"] == []
    assert client.get(f"/v1/models/{body['id']}", headers=bob.headers).status_code == 404


@pytest.mark.parametrize(
    ("config", "extra_file", "code"),
    [
        ({"model_type": "gpt_neox"}, None, "unknown_family"),
        ({**QWEN, "auto_map": {"AutoModel": "modeling_x.Model"}}, None, "remote_code"),
        (QWEN, "modeling_evil.py", "remote_code"),
        (QWEN, "tokenizer_config.json", "remote_code"),
    ],
)
def test_refused_model_directories(
    client: TestClient, alice: KeyFor, data_root: Path, config: dict, extra_file: str | None, code: str
) -> None:
    model_dir = ds.write_model_dir(data_root / "m", config)
    if extra_file == "tokenizer_config.json":
        (model_dir / extra_file).write_text('{"auto_map": {"AutoTokenizer": ["tok.T", null]}}')
    elif extra_file:
        (model_dir / extra_file).write_text("import os\n")
    resp = client.post("/v1/models", json={"name": "m", "path": str(model_dir)}, headers=alice.headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == {"code": code, "message": resp.json()["error"]["message"], "field": "path"}
    assert client.get("/v1/models", headers=alice.headers).json()["data"] == []


def test_pickled_weights_and_non_model_dirs_are_refused(
    client: TestClient, alice: KeyFor, data_root: Path
) -> None:
    model_dir = ds.write_model_dir(data_root / "m", QWEN)
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    resp = client.post("/v1/models", json={"name": "m", "path": str(model_dir)}, headers=alice.headers)
    assert resp.json()["error"]["code"] == "no_weights"
    (data_root / "empty").mkdir()
    resp = client.post(
        "/v1/models", json={"name": "m", "path": str(data_root / "empty")}, headers=alice.headers
    )
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "not_a_model_dir"


def test_model_path_outside_roots(client: TestClient, alice: KeyFor, tmp_path: Path) -> None:
    model_dir = ds.write_model_dir(tmp_path / "outside", QWEN)
    resp = client.post("/v1/models", json={"name": "m", "path": str(model_dir)}, headers=alice.headers)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "path_not_allowed"
