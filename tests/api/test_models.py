"""/v1/models: register Hugging Face directories by reading their config only."""

from __future__ import annotations

import json
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


def _tiny_model_dir(path: Path, family: str, words: list[str]) -> Path:
    from mbpo_core.models.build import build_model, build_processor

    processor = build_processor(family, words, image_size=56)
    build_model(family, processor, "tiny").save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_a_processor_of_another_model_is_refused(client: TestClient, alice: KeyFor, data_root: Path) -> None:
    qwen = _tiny_model_dir(data_root / "qwen", "qwen2_vl", ["red"])
    resp = client.post("/v1/models", json={"name": "ok", "path": str(qwen)}, headers=alice.headers)
    assert resp.status_code == 201, resp.text
    # A bigger vocabulary than the model's embedding, then a tokenizer without the image token.
    big = _tiny_model_dir(data_root / "big", "qwen2_vl", [f"w{i}" for i in range(50)])
    (qwen / "tokenizer.json").write_bytes((big / "tokenizer.json").read_bytes())
    resp = client.post("/v1/models", json={"name": "m", "path": str(qwen)}, headers=alice.headers)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "processor_mismatch"
    assert "vocabulary" in resp.json()["error"]["message"]
    llava = _tiny_model_dir(data_root / "llava", "llava", ["red"])
    tokenizer = json.loads((llava / "tokenizer.json").read_text())
    image_id = json.loads((llava / "config.json").read_text())["image_token_index"]
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] != image_id]
    tokenizer["model"]["vocab"] = {k: v for k, v in tokenizer["model"]["vocab"].items() if v != image_id}
    (llava / "tokenizer.json").write_text(json.dumps(tokenizer))
    resp = client.post("/v1/models", json={"name": "m", "path": str(llava)}, headers=alice.headers)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "processor_mismatch"
    assert "image token" in resp.json()["error"]["message"]
    assert [m["name"] for m in client.get("/v1/models", headers=alice.headers).json()["data"]] == ["ok"]
