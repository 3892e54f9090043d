"""/v1/datasets against PostgreSQL (rolled back per test) with Redis as the broker."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.settings import Settings
from tests.api.conftest import KeyFor
from tests.helpers import datasets as ds
from tests.helpers import services


def queued_messages(settings: Settings, queue: str = "cpu") -> list[dict]:
    client = redis.Redis.from_url(services.REDIS_URL)
    return [json.loads(m) for m in client.lrange(f"{settings.broker_key_prefix}{queue}", 0, -1)]


@pytest.fixture(autouse=True)
def _empty_queues(settings: Settings) -> Iterator[None]:
    services.delete_redis_prefix(settings.broker_key_prefix)
    yield


def upload(client: TestClient, key: KeyFor, tmp: Path, *, name: str = "shapes", rows=None, zip_bytes=None):
    root = ds.make_dataset_dir(tmp / f"src-{name}", rows)
    files = {
        "manifest": ("manifest.jsonl", (root / "manifest.jsonl").read_bytes(), "application/jsonl"),
        "images": (
            "images.zip",
            zip_bytes if zip_bytes is not None else ds.zip_dir_images(root),
            "application/zip",
        ),
    }
    return client.post("/v1/datasets", data={"name": name}, files=files, headers=key.headers)


def test_upload_creates_validating_dataset_and_enqueues_its_id_after_commit(
    client: TestClient, alice: KeyFor, settings: Settings, tmp_path: Path
) -> None:
    resp = upload(client, alice, tmp_path)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "validating" and body["source"] == "upload"
    assert body["id"].startswith("ds_")
    stored = settings.datasets_dir / body["id"]
    assert (stored / "manifest.jsonl").is_file() and (stored / "images" / "0.png").is_file()
    messages = queued_messages(settings)
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert headers["task"] == "mbpo.datasets.validate"
    assert headers["argsrepr"] == f"['{body['id']}']"  # the id only, never the object
    assert messages[0]["content-type"] == "application/json"


def test_path_dataset_inside_data_roots(
    client: TestClient, alice: KeyFor, data_root: Path, settings: Settings
) -> None:
    root = ds.make_dataset_dir(data_root / "shapes")
    resp = client.post("/v1/datasets", json={"name": "on disk", "path": str(root)}, headers=alice.headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["source"] == "path"
    # A .jsonl file is accepted as well: images resolve relative to its directory.
    resp = client.post(
        "/v1/datasets", json={"name": "file", "path": str(root / "manifest.jsonl")}, headers=alice.headers
    )
    assert resp.status_code == 201, resp.text
    assert len(queued_messages(settings)) == 2


@pytest.mark.parametrize(
    ("make_path", "code"),
    [
        (lambda root, tmp: tmp / "elsewhere", "path_not_allowed"),
        (lambda root, tmp: root / ".." / "elsewhere", "path_not_allowed"),
        (lambda root, tmp: root / "nope", "path_not_found"),
        (lambda root, tmp: root / "escape", "path_not_allowed"),  # a symlink inside pointing outside
        (lambda root, tmp: Path("relative/dir"), "path_not_allowed"),
    ],
)
def test_server_path_must_resolve_inside_data_roots(
    client: TestClient,
    alice: KeyFor,
    data_root: Path,
    tmp_path: Path,
    settings: Settings,
    make_path,
    code: str,
) -> None:
    outside = ds.make_dataset_dir(tmp_path / "elsewhere")
    (data_root / "escape").symlink_to(outside)
    resp = client.post(
        "/v1/datasets", json={"name": "x", "path": str(make_path(data_root, tmp_path))}, headers=alice.headers
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == code
    assert resp.json()["error"]["field"] == "path"
    assert queued_messages(settings) == []


def test_json_body_validation_names_the_field(client: TestClient, alice: KeyFor) -> None:
    resp = client.post("/v1/datasets", json={"name": "x", "path": "/a", "colour": 1}, headers=alice.headers)
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "colour"
    resp = client.post("/v1/datasets", json={"path": "/a"}, headers=alice.headers)
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "name"
    resp = client.post(
        "/v1/datasets", content=b"{not json", headers={**alice.headers, "content-type": "application/json"}
    )
    assert resp.status_code == 422


def test_unsupported_content_type(client: TestClient, alice: KeyFor) -> None:
    resp = client.post(
        "/v1/datasets", content=b"name=x", headers={**alice.headers, "content-type": "text/plain"}
    )
    assert resp.status_code == 415
    assert resp.json()["error"]["code"] == "unsupported_media_type"


def test_upload_requires_manifest_and_images(client: TestClient, alice: KeyFor, tmp_path: Path) -> None:
    root = ds.make_dataset_dir(tmp_path / "src")
    resp = client.post(
        "/v1/datasets",
        data={"name": "x"},
        files={"manifest": ("m.jsonl", (root / "manifest.jsonl").read_bytes())},
        headers=alice.headers,
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "images"


def _nothing_written(settings: Settings, client: TestClient, key: KeyFor) -> None:
    leftovers = list(settings.datasets_dir.iterdir()) if settings.datasets_dir.exists() else []
    assert leftovers == []
    assert client.get("/v1/datasets", headers=key.headers).json()["data"] == []
    assert queued_messages(settings) == []


@pytest.mark.parametrize(
    ("entries", "symlinks", "status", "code"),
    [
        ({"../evil.png": b"x"}, None, 422, "unsafe_zip"),
        ({"images/../../evil.png": b"x"}, None, 422, "unsafe_zip"),
        ({"/etc/evil.png": b"x"}, None, 422, "unsafe_zip"),
        ({"images/0.png": b"x"}, {"images/link.png": "/etc/passwd"}, 422, "unsafe_zip"),
        ({"images/bomb.bin": b"\x00" * (3 * 1024 * 1024)}, None, 422, "zip_bomb"),
    ],
)
def test_hostile_zips_are_refused_and_nothing_is_written(
    client: TestClient,
    alice: KeyFor,
    settings: Settings,
    tmp_path: Path,
    entries,
    symlinks,
    status: int,
    code: str,
) -> None:
    resp = upload(client, alice, tmp_path, zip_bytes=ds.zip_entries(entries, symlinks=symlinks))
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert resp.json()["error"]["field"] == "images"
    _nothing_written(settings, client, alice)


def test_not_a_zip(client: TestClient, alice: KeyFor, settings: Settings, tmp_path: Path) -> None:
    resp = upload(client, alice, tmp_path, zip_bytes=b"definitely not a zip")
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "invalid_zip"
    _nothing_written(settings, client, alice)


def test_zip_expanding_past_the_extraction_limit_is_413(
    app: FastAPI, alice: KeyFor, settings: Settings, tmp_path: Path
) -> None:
    app.state.settings = settings.model_copy(update={"max_extracted_bytes": 1000})
    with TestClient(app) as client:
        resp = upload(client, alice, tmp_path, zip_bytes=ds.zip_entries({"images/a.bin": os.urandom(2000)}))
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "extracted_too_large"
        _nothing_written(settings, client, alice)


def test_upload_over_the_limit_is_413_by_content_length(
    client: TestClient, alice: KeyFor, settings: Settings, tmp_path: Path
) -> None:
    resp = upload(client, alice, tmp_path, zip_bytes=os.urandom(settings.max_upload_bytes + 1))
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    _nothing_written(settings, client, alice)


def test_streamed_upload_without_length_is_cut_off_at_the_limit(
    client: TestClient, alice: KeyFor, settings: Settings
) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="i.zip"\r\n\r\n'
        for _ in range(64):  # 4 MiB in total, twice the limit
            sent += 65536
            yield b"\x00" * 65536

    resp = client.post(
        "/v1/datasets",
        content=body(),
        headers={**alice.headers, "content-type": "multipart/form-data; boundary=b"},
    )
    assert resp.status_code == 413
    _nothing_written(settings, client, alice)


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[int]:
    port = services.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    services.wait_for(lambda: server.started, timeout=10, what="uvicorn")
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_413_arrives_before_the_body_is_sent(live_server: int, alice: KeyFor) -> None:
    """The server answers from the Content-Length header alone: the client has sent 1 KiB of a
    declared 1 GiB when the 413 comes back."""
    with socket.create_connection(("127.0.0.1", live_server), timeout=10) as sock:
        head = (
            "POST /v1/datasets HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: Bearer {alice.key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"\x00" * 1024)
        started = time.monotonic()
        response = sock.recv(65536).decode(errors="replace")
    assert response.startswith("HTTP/1.1 413"), response
    assert time.monotonic() - started < 5
    assert '"payload_too_large"' in response


def test_get_and_list_with_cursor_pagination(client: TestClient, alice: KeyFor, data_root: Path) -> None:
    root = ds.make_dataset_dir(data_root / "shapes")
    ids = []
    for i in range(5):
        resp = client.post("/v1/datasets", json={"name": f"d{i}", "path": str(root)}, headers=alice.headers)
        ids.append(resp.json()["id"])
    got = client.get(f"/v1/datasets/{ids[2]}", headers=alice.headers).json()
    assert got["name"] == "d2" and "report" in got

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/datasets", params=params, headers=alice.headers).json()
        assert len(page["data"]) <= 2
        assert all("report" not in d for d in page["data"])
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once


def test_bad_pagination_parameters(client: TestClient, alice: KeyFor) -> None:
    resp = client.get("/v1/datasets", params={"cursor": "%%%"}, headers=alice.headers)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "cursor"
    resp = client.get("/v1/datasets", params={"limit": 0}, headers=alice.headers)
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "limit"


def test_other_users_dataset_is_404_and_admin_sees_all(
    client: TestClient, alice: KeyFor, bob: KeyFor, admin: KeyFor, data_root: Path
) -> None:
    root = ds.make_dataset_dir(data_root / "shapes")
    ds_id = client.post(
        "/v1/datasets", json={"name": "mine", "path": str(root)}, headers=alice.headers
    ).json()["id"]
    resp = client.get(f"/v1/datasets/{ds_id}", headers=bob.headers)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    assert client.get("/v1/datasets", headers=bob.headers).json()["data"] == []
    assert client.get(f"/v1/datasets/{ds_id}", headers=admin.headers).status_code == 200
    assert [d["id"] for d in client.get("/v1/datasets", headers=admin.headers).json()["data"]] == [ds_id]


def test_unknown_dataset_is_404(client: TestClient, alice: KeyFor) -> None:
    resp = client.get("/v1/datasets/ds_nope", headers=alice.headers)
    assert resp.status_code == 404
    assert set(resp.json()) == {"error"}
