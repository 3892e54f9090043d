"""Datasets in other formats (TRL, HF datasets, parquet) through the API and a real worker process:
converted into a manifest + images by the validation job, or refused with a report naming the row
and nothing left in storage."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, Features, Image, List, Value
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth.service import create_api_key
from infra.settings import Settings
from tests.helpers import datasets as ds
from tests.worker.test_validation_e2e import wait_validated


@pytest.fixture(scope="module")
def client(e2e_settings: Settings, celery_worker: Path) -> Iterator[TestClient]:
    with TestClient(create_app(e2e_settings)) as c:
        yield c


@pytest.fixture(scope="module")
def headers(pg_factory: sessionmaker[Session]) -> dict[str, str]:
    with pg_factory.begin() as session:
        _, key = create_api_key(session, user_name="importer", key_name="importer", admin=False)
    return {"Authorization": f"Bearer {key}"}


def trl_rows(root: Path, *, bad_row: bool = False) -> list[dict[str, Any]]:
    """The manifest samples of tests.helpers.datasets as TRL `messages` rows with `images`."""
    ds.write_images(root)
    rows: list[dict[str, Any]] = []
    for sample in ds.good_samples():
        question = sample["question"]
        if sample.get("choices"):
            question += " Options: " + ", ".join(sample["choices"])
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": sample["answer"]}]},
                ],
                "images": [sample["image"]] * (2 if bad_row and len(rows) == 2 else 1),
            }
        )
    return rows


def zip_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root.name}/{path.relative_to(root)}")
    return buf.getvalue()


def upload_archive(client: TestClient, headers: dict[str, str], root: Path, **data: str) -> dict[str, Any]:
    resp = client.post(
        "/v1/datasets",
        data={"name": root.name, **data},
        files={"archive": ("data.zip", zip_dir(root), "application/zip")},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


def nothing_stored(settings: Settings, dataset_id: str) -> bool:
    return (
        not (settings.datasets_dir / dataset_id).exists()
        and not settings.upload_source_dir(dataset_id).exists()
    )


def test_trl_upload_becomes_ready(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "trl"
    rows = trl_rows(root)
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    created = upload_archive(client, headers, root)
    assert created["format"] == "trl" and created["status"] == "validating"
    body = wait_validated(client, headers, created["id"])
    assert body["status"] == "ready", body
    # Tasks are inferred from the answers; the letter answer without choices is open.
    assert body["task_counts"] == {"yes_no": 2, "number": 1, "open": 2}
    stored = e2e_settings.datasets_dir / created["id"]
    assert (stored / "manifest.jsonl").is_file() and len(list((stored / "images").glob("*.png"))) == 4
    assert not e2e_settings.upload_source_dir(created["id"]).exists()


def test_hf_disk_path_becomes_ready(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings
) -> None:
    root = e2e_settings.data_roots[0] / "hf"
    ds.write_images(root / "src")
    samples = ds.good_samples()
    features = Features(
        {
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "task": Value("string"),
            "choices": List(Value("string")),
        }
    )
    Dataset.from_dict(
        {
            "image": [str(root / "src" / s["image"]) for s in samples],
            "question": [s["question"] for s in samples],
            "answer": [s["answer"] for s in samples],
            "task": [s["task"] for s in samples],
            "choices": [s.get("choices") for s in samples],
        },
        features=features,
    ).save_to_disk(str(root / "disk"))
    resp = client.post("/v1/datasets", json={"name": "hf", "path": str(root / "disk")}, headers=headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "hf_disk"
    body = wait_validated(client, headers, resp.json()["id"])
    assert body["status"] == "ready", body
    assert body["task_counts"] == {"yes_no": 2, "multiple_choice": 1, "number": 1, "open": 1}


def test_trl_row_with_the_wrong_image_count_is_invalid_and_nothing_stays(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "trl-bad"
    rows = trl_rows(root, bad_row=True)
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    created = upload_archive(client, headers, root, format="trl")
    body = wait_validated(client, headers, created["id"])
    assert body["status"] == "invalid" and body["num_samples"] == 0
    assert [(e["line"], e["code"], e["field"]) for e in body["report"]["errors"]] == [
        (3, "image_count_mismatch", "images")
    ]
    assert "row 3" in body["error"]["message"]
    assert nothing_stored(e2e_settings, created["id"])


def test_parquet_without_image_column_is_invalid_naming_rows(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings
) -> None:
    root = e2e_settings.data_roots[0] / "noimage"
    root.mkdir()
    Dataset.from_dict({"question": ["Is it?", "Is it?"], "answer": ["yes", "no"]}).to_parquet(
        str(root / "d.parquet")
    )
    resp = client.post("/v1/datasets", json={"name": "p", "path": str(root / "d.parquet")}, headers=headers)
    assert resp.status_code == 201, resp.text
    body = wait_validated(client, headers, resp.json()["id"])
    assert body["status"] == "invalid"
    assert [(e["line"], e["code"], e["field"]) for e in body["report"]["errors"]] == [
        (1, "missing_field", "image"),
        (2, "missing_field", "image"),
    ]
    assert nothing_stored(e2e_settings, body["id"])


def test_unrecognised_or_mismatched_formats_are_422(
    client: TestClient, headers: dict[str, str], e2e_settings: Settings
) -> None:
    root = e2e_settings.data_roots[0] / "empty"
    root.mkdir()
    resp = client.post("/v1/datasets", json={"name": "e", "path": str(root)}, headers=headers)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "unknown_format"
    (root / "x.json").write_text("[]")
    resp = client.post(
        "/v1/datasets", json={"name": "e", "path": str(root), "format": "parquet"}, headers=headers
    )
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "format"
