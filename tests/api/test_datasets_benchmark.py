"""POST /v1/datasets with a benchmark (format `benchmark`): registered from server paths inside the
data roots, refused with the field named when the benchmark, its paths or the other options are
wrong (nothing queued, no row); a benchmark dataset is only an evaluation dataset of a run.
Validation by the worker and a run scored on one: tests/worker/test_benchmark_e2e.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from infra.db.models import BaseModelRecord, Dataset, DatasetStatus
from infra.settings import Settings
from tests.api.conftest import KeyFor
from tests.api.test_datasets import queued_messages
from tests.helpers import services
from tests.mbpo_core.evaluation.test_benchmarks_pope import row, write_pope


@pytest.fixture(autouse=True)
def _empty_queues(settings: Settings) -> None:
    services.delete_redis_prefix(settings.broker_key_prefix)


@pytest.fixture
def pope_files(data_root: Path) -> tuple[Path, Path]:
    root = data_root / "pope"
    write_pope(root, "coco_pope_random.json", [row(1, "yes"), row(2, "no")])
    return root, root / "images"


def _dataset_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return session.query(Dataset).count()


def test_a_benchmark_registers_from_server_paths(
    client: TestClient,
    alice: KeyFor,
    settings: Settings,
    pope_files: tuple[Path, Path],
    session_factory: sessionmaker[Session],
) -> None:
    data, images = pope_files
    body = {"name": "POPE COCO", "path": str(data), "benchmark": "pope", "images": str(images)}
    resp = client.post("/v1/datasets", json=body, headers=alice.headers)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert (created["format"], created["benchmark"], created["status"]) == ("benchmark", "pope", "validating")
    messages = queued_messages(settings)
    assert [m["headers"]["argsrepr"] for m in messages] == [f"['{created['id']}']"]
    with session_factory() as session:
        dataset = session.get(Dataset, created["id"])
        assert dataset is not None
        assert (dataset.root_path, dataset.images_path) == (str(data), str(images))
    # `format: benchmark` says the same; the listing shows which benchmark it is.
    resp = client.post("/v1/datasets", json={**body, "format": "benchmark"}, headers=alice.headers)
    assert resp.status_code == 201, resp.text
    listed = client.get("/v1/datasets", headers=alice.headers).json()["data"]
    assert [d["benchmark"] for d in listed] == ["pope", "pope"]


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"benchmark": "popee"}, "unknown_benchmark", "benchmark"),
        ({"benchmark": "mmhal"}, "judge_required", "benchmark"),  # no judge in the service
        ({"benchmark": None, "format": "benchmark"}, "validation_error", "benchmark"),
        ({"benchmark": None}, "validation_error", "images"),  # images belong to benchmarks
        ({"format": "trl"}, "validation_error", "format"),
        ({"columns": {"question": "q"}}, "validation_error", "columns"),
        ({"images": "/elsewhere/images"}, "path_not_allowed", "images"),
        ({"path": "/elsewhere/pope"}, "path_not_allowed", "path"),
    ],
)
def test_a_bad_benchmark_registration_names_the_field(
    client: TestClient,
    alice: KeyFor,
    settings: Settings,
    pope_files: tuple[Path, Path],
    session_factory: sessionmaker[Session],
    change: dict[str, Any],
    code: str,
    field: str,
) -> None:
    data, images = pope_files
    body = {"name": "b", "path": str(data), "benchmark": "pope", "images": str(images)} | change
    resp = client.post(
        "/v1/datasets", json={k: v for k, v in body.items() if v is not None}, headers=alice.headers
    )
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert queued_messages(settings) == [] and _dataset_count(session_factory) == 0


def test_images_must_be_a_folder_and_uploads_are_not_benchmarks(
    client: TestClient, alice: KeyFor, pope_files: tuple[Path, Path], settings: Settings
) -> None:
    data, _ = pope_files
    body = {
        "name": "b",
        "path": str(data),
        "benchmark": "pope",
        "images": str(data / "coco_pope_random.json"),
    }
    resp = client.post("/v1/datasets", json=body, headers=alice.headers)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "images"
    resp = client.post(
        "/v1/datasets",
        data={"name": "b", "format": "benchmark"},
        files={"archive": ("a.zip", b"PK", "application/zip")},
        headers=alice.headers,
    )
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "format"
    assert "server path" in resp.json()["error"]["message"]
    assert queued_messages(settings) == []


def test_a_benchmark_dataset_evaluates_but_never_trains(
    client: TestClient, alice: KeyFor, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    with session_factory.begin() as session:
        model = BaseModelRecord(
            owner_id=alice.user_id,
            name="m",
            path="/m",
            family="qwen2_vl",
            model_type="qwen2_vl",
            param_count=1,
        )
        online = Dataset(
            owner_id=alice.user_id,
            name="online",
            source="path",
            root_path="/nowhere",
            manifest_name="manifest.jsonl",
            status=DatasetStatus.ready,
            task_counts={"yes_no": 4},
        )
        pope = Dataset(
            owner_id=alice.user_id,
            name="pope",
            source="path",
            root_path="/nowhere/pope",
            manifest_name="",
            format="benchmark",
            benchmark="pope",
            status=DatasetStatus.ready,
            task_counts={},
        )
        session.add_all([model, online, pope])
        session.flush()
        ids = {"model": model.id, "online": online.id, "pope": pope.id}
    body = {
        "name": "r",
        "base_model_id": ids["model"],
        "online_dataset_id": ids["pope"],
        "eval_dataset_ids": [],
    }
    resp = client.post("/v1/runs", json=body, headers=alice.headers)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["field"]) == ("dataset_unsuitable", "online_dataset_id")
    assert "only be an evaluation dataset" in error["message"]
    body = {**body, "online_dataset_id": ids["online"], "eval_dataset_ids": [ids["pope"]]}
    resp = client.post("/v1/runs", json=body, headers=alice.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["eval_dataset_ids"] == [ids["pope"]]
    gpu = queued_messages(settings, "gpu")
    assert [m["headers"]["argsrepr"] for m in gpu] == [f"['{resp.json()['id']}']"]
