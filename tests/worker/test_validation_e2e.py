"""End to end on the production stack: API -> PostgreSQL -> Redis -> real Celery worker process ->
PostgreSQL. Nothing is mocked; the API runs in-process, the worker is `mbpo worker`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth.service import create_api_key
from infra.jobs import TaskName, get_celery
from infra.settings import Settings
from tests.helpers import datasets as ds
from tests.helpers import services


@pytest.fixture(scope="module")
def client(e2e_settings: Settings, celery_worker: Path) -> Iterator[TestClient]:
    with TestClient(create_app(e2e_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def headers(pg_factory: sessionmaker[Session]) -> dict[str, str]:
    with pg_factory.begin() as session:
        _, key = create_api_key(session, user_name="e2e", key_name="e2e", admin=False)
    return {"Authorization": f"Bearer {key}"}


def wait_validated(client: TestClient, headers: dict[str, str], dataset_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/datasets/{dataset_id}", headers=headers).json()
        return body if body["status"] != "validating" else None

    return services.wait_for(done, timeout=60, interval=0.3, what=f"validation of {dataset_id}")


def test_uploaded_dataset_becomes_ready_with_stats(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings, tmp_path: Path
) -> None:
    root = ds.make_dataset_dir(tmp_path / "src")
    resp = client.post(
        "/v1/datasets",
        data={"name": "uploaded"},
        files={
            "manifest": ("manifest.jsonl", (root / "manifest.jsonl").read_bytes()),
            "images": ("images.zip", ds.zip_dir_images(root)),
        },
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    body = wait_validated(client, headers, resp.json()["id"])
    assert body["status"] == "ready", body
    assert body["num_samples"] == 5
    assert body["task_counts"] == {"yes_no": 2, "multiple_choice": 1, "number": 1, "open": 1}
    assert body["stats"]["images"]["distinct"] == 4 and body["stats"]["thumbnails"] == 4
    assert body["report"]["error_count"] == 0 and body["validated_at"]
    assert (e2e_settings.home_dir / "thumbnails" / body["id"] / "index.json").is_file()


def test_server_path_dataset_becomes_ready(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings
) -> None:
    root = ds.make_dataset_dir(e2e_settings.data_roots[0] / "shapes")
    resp = client.post("/v1/datasets", json={"name": "on disk", "path": str(root)}, headers=headers)
    assert resp.status_code == 201, resp.text
    body = wait_validated(client, headers, resp.json()["id"])
    assert body["status"] == "ready" and body["num_samples"] == 5


def test_bad_dataset_becomes_invalid_naming_lines_and_reasons(
    client: TestClient, headers: dict[str, str], tmp_path: Path
) -> None:
    good = ds.good_samples()
    rows: list = [
        good[0],
        "{broken",
        {**good[1], "task": "caption"},
        {**good[2], "image": "images/missing.png"},
    ]
    root = ds.make_dataset_dir(tmp_path / "src", rows)
    (root / "images" / "huge.png").write_bytes(ds.png_bomb())
    ds.write_manifest(root / "manifest.jsonl", [*rows, {**good[3], "image": "images/huge.png"}])
    resp = client.post(
        "/v1/datasets",
        data={"name": "bad"},
        files={
            "manifest": ("manifest.jsonl", (root / "manifest.jsonl").read_bytes()),
            "images": ("images.zip", ds.zip_dir_images(root)),
        },
        headers=headers,
    )
    body = wait_validated(client, headers, resp.json()["id"])
    assert body["status"] == "invalid"
    assert body["error"]["code"] == "invalid_dataset"
    assert "line 2" in body["error"]["message"]
    assert [(e["line"], e["code"]) for e in body["report"]["errors"]] == [
        (2, "invalid_json"),
        (3, "unknown_task"),
        (4, "missing_image"),
        (5, "too_many_pixels"),
    ]


def test_a_duplicated_message_runs_the_job_once(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings, celery_worker: Path
) -> None:
    root = ds.make_dataset_dir(e2e_settings.data_roots[0] / "dup")
    ds_id = client.post("/v1/datasets", json={"name": "dup", "path": str(root)}, headers=headers).json()["id"]
    get_celery(e2e_settings).send_task(TaskName.validate_dataset.value, args=[ds_id])  # a redelivery
    first = wait_validated(client, headers, ds_id)
    assert first["status"] == "ready"

    def both_handled() -> bool:
        return celery_worker.read_text(errors="replace").count("mbpo.datasets.validate[") >= 2 and (
            f"dataset {ds_id}: not claimable" in celery_worker.read_text(errors="replace")
        )

    services.wait_for(both_handled, timeout=30, what="the duplicate to be refused")
    log = celery_worker.read_text(errors="replace")
    assert log.count(f"dataset {ds_id}: ready") == 1
    again = client.get(f"/v1/datasets/{ds_id}", headers=headers).json()
    assert again["updated_at"] == first["updated_at"]
