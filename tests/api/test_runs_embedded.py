"""A run in embedded mode: `mbpo serve` with only MBPO_HOME (SQLite database, SQLite broker, its own
local worker), the quick testbed, a tiny online-only config. The event stream works by polling the
table; the run succeeds and its checkpoint downloads."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import runs as rh
from tests.helpers import services


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path, Path]]:
    testbed = rh.quick_testbed()
    base = tmp_path_factory.mktemp("embedded-runs")
    roots = base / "roots"
    roots.mkdir()
    env = services.service_env(
        MBPO_HOME=str(base / "home"), MBPO_DATA_ROOTS=f"{roots}:{testbed}", OMP_NUM_THREADS="2"
    )
    port = services.free_port()
    log = base / "serve.log"
    proc = services.start_mbpo(["serve", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        services.wait_for(up, timeout=120, interval=0.5, what="mbpo serve")
        services.wait_for(
            lambda: "ready." in log.read_text(errors="replace"), timeout=90, what="local worker"
        )
        key = (base / "home" / "admin_key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            yield client, testbed, base
    finally:
        services.stop_process_group(proc)


def _register(client: httpx.Client, testbed: Path, roots: Path) -> dict[str, Any]:
    model = client.post("/v1/models", json={"name": "testbed", "path": str(testbed / "base_model")})
    assert model.status_code == 201, model.text
    ids = {}
    for split, n in {"online": 16, "pope_adversarial": 8}.items():
        path = rh.write_subset(testbed, split, roots / split, n)
        ids[split] = client.post("/v1/datasets", json={"name": split, "path": str(path)}).json()["id"]
    for dataset_id in ids.values():

        def ready(d: str = dataset_id) -> bool:
            return bool(client.get(f"/v1/datasets/{d}").json()["status"] == "ready")

        services.wait_for(ready, timeout=120, interval=0.5, what="embedded validation")
    return {"model": model.json()["id"], **ids}


def test_embedded_run_streams_events_and_serves_its_checkpoint(
    served: tuple[httpx.Client, Path, Path],
) -> None:
    client, testbed, base = served
    refs = _register(client, testbed, base / "roots")
    body = {
        "name": "embedded",
        "base_model_id": refs["model"],
        "online_dataset_id": refs["online"],
        "eval_dataset_ids": [refs["pope_adversarial"]],
        "config": rh.quick_config(max_steps=2),
    }
    created = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "embedded-1"})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    events, _, ended = rh.read_sse(client, f"/v1/runs/{run_id}/events/stream")
    assert ended and events[-1]["type"] == "run_succeeded", events[-1]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["stage"] for e in events if e["type"] == "stage_started"] == [
        "validating",
        "scoring",
        "mining",
        "training",
        "evaluating",
    ]
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["attempt"] == 1
    assert set(run["scores"]["aligned"]) == {"pope_adversarial"}
    download = client.get(f"/v1/runs/{run_id}/checkpoints/2/download")
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content)) as archive:
        assert "checkpoint-2/config.json" in archive.getnames()
    home = base / "home"
    assert (home / "mbpo.db").is_file() and (home / "broker.db").is_file()
    assert (home / "runs" / run_id / "training" / "model" / "config.json").is_file()
