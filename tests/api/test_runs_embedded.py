"""The demo and a run in embedded mode: `mbpo serve --demo TESTBED` with only MBPO_HOME (SQLite
database, SQLite broker, its own local workers) registers the quick testbed; a tiny online-only run
on it succeeds, its event stream works by polling the table, and its checkpoint downloads; chat
completions answer as fast while a run trains as when nothing runs."""

from __future__ import annotations

import base64
import io
import json
import statistics
import tarfile
import time
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
    # One torch thread per process: on a 2-core machine the run and the chat each get a core.
    env = services.service_env(MBPO_HOME=str(base / "home"), OMP_NUM_THREADS="1")
    log = base / "serve.log"
    with services.embedded_serve(["--demo", str(testbed)], env, log) as (url, _):
        key = (base / "home" / "admin_key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            yield client, testbed, base


def _demo_refs(client: httpx.Client, base: Path) -> dict[str, Any]:
    """What `mbpo serve --demo` registered: the body of the demo run, its datasets validated."""
    body: dict[str, Any] = json.loads((base / "home" / "demo_run.json").read_text())
    for dataset_id in [body["online_dataset_id"], *body["eval_dataset_ids"]]:

        def validated(d: str = dataset_id) -> str | None:
            status = str(client.get(f"/v1/datasets/{d}").json()["status"])
            return None if status == "validating" else status

        assert services.wait_for(validated, timeout=180, interval=0.5, what="embedded validation") == "ready"
    return body


def test_serve_registers_the_demo_and_prints_its_curl(served: tuple[httpx.Client, Path, Path]) -> None:
    client, _, base = served
    log = (base / "serve.log").read_text()
    assert "curl -s -X POST" in log and str(base / "home" / "demo_run.json") in log
    body = _demo_refs(client, base)
    assert client.get(f"/v1/models/{body['base_model_id']}").json()["family"] == "qwen2_vl"
    assert len(body["eval_dataset_ids"]) == 3 and body["offline_dataset_id"]


def test_embedded_run_streams_events_and_serves_its_checkpoint(
    served: tuple[httpx.Client, Path, Path],
) -> None:
    client, _, base = served
    demo = _demo_refs(client, base)
    body = {
        "name": "embedded",
        "base_model_id": demo["base_model_id"],
        "online_dataset_id": demo["online_dataset_id"],
        "eval_dataset_ids": demo["eval_dataset_ids"][1:2],  # pope_adversarial
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
    assert set(run["scores"]["aligned"]) == {"testbed-pope_adversarial"}
    download = client.get(f"/v1/runs/{run_id}/checkpoints/2/download")
    assert download.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(download.content)) as archive:
        assert "checkpoint-2/config.json" in archive.getnames()
    home = base / "home"
    assert (home / "mbpo.db").is_file() and (home / "broker.db").is_file()
    assert (home / "runs" / run_id / "training" / "model" / "config.json").is_file()


def _chat_p50(client: httpx.Client, model: str, image: str, n: int) -> float:
    """Median seconds of `n` sequential one-image chat completions."""
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": 4,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "is there a red circle ?"},
                ],
            }
        ],
    }
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        resp = client.post("/v1/chat/completions", json=body)
        seconds.append(time.perf_counter() - started)
        assert resp.status_code == 200, resp.text
    return statistics.median(seconds)


def test_chat_does_not_wait_behind_a_training_stage(served: tuple[httpx.Client, Path, Path]) -> None:
    """Runs and inference have a worker each: a chat request is answered while a run trains, about
    as fast as on an idle service (on one core each: OMP_NUM_THREADS=1)."""
    client, testbed, base = served
    demo = _demo_refs(client, base)
    model = f"model:{demo['base_model_id']}"
    png = next((testbed / "datasets" / "pope_adversarial" / "images").glob("*.png")).read_bytes()
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    _chat_p50(client, model, image, 3)  # the model loads
    idle = _chat_p50(client, model, image, 15)

    body = {
        "name": "long training",
        "base_model_id": demo["base_model_id"],
        "online_dataset_id": demo["online_dataset_id"],
        "eval_dataset_ids": demo["eval_dataset_ids"][1:2],
        "config": rh.quick_config(max_steps=500, save_steps=500),
    }
    run_id = client.post("/v1/runs", json=body).json()["id"]
    try:

        def training() -> bool:
            run = client.get(f"/v1/runs/{run_id}").json()
            assert run["status"] in {"queued", "validating", "scoring", "mining", "training"}, run
            return run["status"] == "training" and run["latest_metrics"].get("step", 0) >= 1

        services.wait_for(training, timeout=180, interval=0.3, what="training steps")
        busy = _chat_p50(client, model, image, 15)
        run = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "training" and run["latest_metrics"]["step"] < 500  # still training
    finally:
        client.post(f"/v1/runs/{run_id}/cancel")
        rh.wait_status(client, run_id, {"cancelled", "failed", "succeeded"}, timeout=120)
    print(f"chat p50: {idle * 1000:.1f} ms idle, {busy * 1000:.1f} ms during training")
    assert busy <= 2 * idle, f"chat p50 {busy * 1000:.1f} ms while training, {idle * 1000:.1f} ms idle"
