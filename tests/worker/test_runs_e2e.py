"""Runs end to end on the real stack: `mbpo api` and `mbpo worker` subprocesses on PostgreSQL and
Redis, the quick testbed's model and data, a tiny config. One full run is shared by the read-only
tests; the kill, cancel and resume tests each launch a short online-only run."""

from __future__ import annotations

import io
import shutil
import signal
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from infra.jobs import TaskName, get_celery
from infra.settings import Settings
from mbpo_core.pipeline.stages import STAGES
from tests.helpers import runs as rh
from tests.helpers import services


@pytest.fixture(scope="module")
def testbed() -> Path:
    return rh.quick_testbed()


@pytest.fixture(scope="module")
def stack(committed_db: str, tmp_path_factory: pytest.TempPathFactory, testbed: Path) -> Iterator[rh.Stack]:
    services.require_redis()
    base = tmp_path_factory.mktemp("runs-e2e")
    (base / "roots").mkdir()
    prefix = services.broker_prefix()
    env = services.service_env(
        DATABASE_URL=committed_db,
        BROKER_URL=services.REDIS_URL,
        MBPO_BROKER_KEY_PREFIX=prefix,
        MBPO_HOME=str(base / "home"),
        MBPO_DATA_ROOTS=f"{base / 'roots'}:{testbed}",
        MBPO_ENV="test",
        MBPO_LEASE_SECONDS="8",
        MBPO_SWEEP_SECONDS="1",
        MBPO_SSE_PING_SECONDS="1",
        OMP_NUM_THREADS="2",
    )
    stack = rh.Stack(env=env, base=base)
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()
        services.delete_redis_prefix(prefix)


@pytest.fixture(scope="module")
def client(stack: rh.Stack, pg_factory: sessionmaker[Session]) -> Iterator[httpx.Client]:
    with pg_factory.begin() as session:
        _, key = create_api_key(session, user_name="runner", key_name="runner", admin=False)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def refs(client: httpx.Client, stack: rh.Stack, testbed: Path) -> dict[str, Any]:
    """The testbed base model and small dataset subsets, registered and validated."""
    model = client.post("/v1/models", json={"name": "testbed", "path": str(testbed / "base_model")})
    assert model.status_code == 201, model.text
    roots = stack.base / "roots"
    sizes = {"offline": 40, "online": 32, "pope_random": 16, "pope_adversarial": 16}
    ids = {}
    for split, n in sizes.items():
        path = rh.write_subset(testbed, split, roots / split, n)
        created = client.post("/v1/datasets", json={"name": split, "path": str(path)})
        assert created.status_code == 201, created.text
        ids[split] = created.json()["id"]
    for split, dataset_id in ids.items():

        def ready(d: str = dataset_id) -> bool:
            return bool(client.get(f"/v1/datasets/{d}").json()["status"] == "ready")

        services.wait_for(ready, timeout=120, what=f"dataset {split} ready")
    return {"model": model.json()["id"], **ids}


def _body(refs: dict[str, Any], name: str, config: dict[str, Any], *, offline: bool, evals: list[str]) -> Any:
    return {
        "name": name,
        "base_model_id": refs["model"],
        "offline_dataset_id": refs["offline"] if offline else None,
        "online_dataset_id": refs["online"],
        "eval_dataset_ids": [refs[s] for s in evals],
        "config": config,
    }


@pytest.fixture(scope="module")
def full_run(
    client: httpx.Client, refs: dict[str, Any], stack: rh.Stack, committed_db: str
) -> dict[str, Any]:
    """One complete run, launched with an Idempotency-Key; its task message is sent a second time
    at once, and its SSE stream is read with a reconnect (Last-Event-ID) in the middle."""
    config = rh.quick_config()
    config["eval"]["attack_eval"] = True
    body = _body(refs, "full", config, offline=True, evals=["pope_random", "pope_adversarial"])
    created = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "full-run-1"})
    assert created.status_code == 201, created.text
    run = created.json()
    settings = Settings(
        database_url=committed_db,
        broker_url=services.REDIS_URL,
        broker_key_prefix=stack.env["MBPO_BROKER_KEY_PREFIX"],
    )
    get_celery(settings).send_task(TaskName.execute_run.value, args=[run["id"]])  # a duplicate delivery

    stream = f"/v1/runs/{run['id']}/events/stream"
    first, _, ended = rh.read_sse(client, stream, max_events=4)
    assert not ended and [e["seq"] for e in first] == [1, 2, 3, 4]
    rest, pings, ended = rh.read_sse(client, stream, last_event_id=first[-1]["seq"])
    final = rh.wait_status(client, run["id"], {"succeeded", "failed", "cancelled"})
    return {
        "run": final,
        "created": run,
        "body": body,
        "sse": first + rest,
        "sse_ended": ended,
        "pings": pings,
    }


def test_full_run_succeeds_with_ordered_events_and_scores(
    full_run: dict[str, Any], client: httpx.Client
) -> None:
    run = full_run["run"]
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 1 and run["error"] is None
    assert run["progress"] == 1.0 and set(run["stage_progress"]) == set(STAGES)
    events = rh.all_events(client, run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "run_queued" and types[-1] == "run_succeeded"
    assert [e["stage"] for e in events if e["type"] == "stage_started"] == list(STAGES)
    assert [e["stage"] for e in events if e["type"] == "stage_completed"] == list(STAGES)
    steps = [e["data"]["step"] for e in events if e["type"] == "train_step"]
    assert steps == [1, 2, 3]
    for which in ("base", "aligned"):
        assert set(run["scores"][which]) == {"pope_random", "pope_adversarial"}
        for metrics in run["scores"][which].values():
            assert {"f1", "accuracy", "yes_ratio", "iig_mean"} <= set(metrics)
    assert set(run["scores"]["delta"]["pope_adversarial"]) >= {"f1", "accuracy"}
    for which in ("base", "aligned"):  # a fresh PGD attack on each model
        assert run["scores"]["attack"][which]["split"] == "pope_adversarial"
        assert run["scores"]["attack"][which]["n_attacked"] > 0
    assert run["latest_metrics"]["step"] == 3 and "loss" in run["latest_metrics"]


def test_sse_reconnect_has_no_gap_or_duplicate(full_run: dict[str, Any], client: httpx.Client) -> None:
    seqs = [e["seq"] for e in full_run["sse"]]
    stored = rh.all_events(client, full_run["run"]["id"])
    assert seqs == [e["seq"] for e in stored]  # the union of both connections, in order, once each
    assert full_run["sse_ended"] and full_run["sse"][-1]["type"] == "run_succeeded"
    assert full_run["pings"] > 0  # keep-alive comments while nothing happened for a second
    # A finished run's stream replays what follows Last-Event-ID and closes.
    tail, _, ended = rh.read_sse(
        client, f"/v1/runs/{full_run['run']['id']}/events/stream", last_event_id=seqs[-3]
    )
    assert [e["seq"] for e in tail] == seqs[-2:] and ended


def test_duplicate_message_runs_once(full_run: dict[str, Any], client: httpx.Client, stack: rh.Stack) -> None:
    run_id = full_run["run"]["id"]
    events = rh.all_events(client, run_id)
    assert [e["type"] for e in events].count("run_started") == 1
    services.wait_for(
        lambda: f"run {run_id}: not claimable" in stack.worker_logs(),
        timeout=30,
        what="duplicate to be dropped",
    )


def test_idempotency_key_replays_the_same_run(full_run: dict[str, Any], client: httpx.Client) -> None:
    again = client.post("/v1/runs", json=full_run["body"], headers={"Idempotency-Key": "full-run-1"})
    assert again.status_code == 200 and again.json()["id"] == full_run["created"]["id"]
    other = {**full_run["body"], "name": "another"}
    clash = client.post("/v1/runs", json=other, headers={"Idempotency-Key": "full-run-1"})
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "idempotency_key_reused"


def test_metrics_checkpoints_and_negatives(full_run: dict[str, Any], client: httpx.Client) -> None:
    run_id = full_run["run"]["id"]
    series = client.get(f"/v1/runs/{run_id}/metrics").json()["series"]
    assert [p["step"] for p in series["loss"]] == [1, 2, 3]
    checkpoints = client.get(f"/v1/runs/{run_id}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == [1, 2, 3]
    assert checkpoints[-1]["eval_scores"]["aligned"] == full_run["run"]["scores"]["aligned"]
    assert "loss" in checkpoints[-1]["metrics"]
    artefacts = {a["kind"]: a for a in client.get(f"/v1/runs/{run_id}/artefacts").json()}
    kinds = {"validation_report", "iig_scores", "mined_pairs", "mining_summary", "model", "eval_report"}
    assert set(artefacts) == kinds
    assert artefacts["model"]["path"] == "training/model" and artefacts["model"]["download_url"] is None
    report = client.get(artefacts["eval_report"]["download_url"])
    assert report.status_code == 200 and report.json() == full_run["run"]["scores"]
    negatives = client.get(f"/v1/runs/{run_id}/negatives", params={"limit": 2}).json()
    assert negatives["summary"]["n_pairs"] == negatives["total"]
    if negatives["total"]:
        pair = negatives["data"][0]
        assert pair["chosen"] != pair["rejected"]
        for url in (pair["clean_image_url"], pair["perturbed_image_url"]):
            image = client.get(url)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert httpx.get(client.base_url.join(url)).status_code == 401
        escape = pair["clean_image_url"].rsplit("/files/", 1)[0] + "/files/../../../mbpo.db"
        assert client.get(escape).status_code == 404


def test_downloaded_checkpoint_loads_and_answers(
    full_run: dict[str, Any], client: httpx.Client, tmp_path: Path, stack: rh.Stack
) -> None:
    from mbpo_core.data.manifest import read_manifest
    from mbpo_core.data.verifiers import parse_answer
    from mbpo_core.evaluation.evaluate import load_pixels
    from mbpo_core.models.loader import load_adapter

    response = client.get(f"/v1/runs/{full_run['run']['id']}/checkpoints/3/download")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    assert int(response.headers["content-length"]) == len(response.content)
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = archive.getnames()
        assert all(n.startswith("checkpoint-3/") and ".." not in n for n in names)
        assert not [n for n in names if n.endswith((".pt", ".pth", ".bin"))]
        assert "checkpoint-3/config.json" in names and any(n.endswith(".safetensors") for n in names)
        archive.extractall(tmp_path, filter="data")
    adapter = load_adapter(tmp_path / "checkpoint-3")
    manifest = stack.base / "roots" / "pope_random" / "manifest.jsonl"
    sample = read_manifest(manifest)[0]
    answer = adapter.generate(load_pixels(manifest.parent, [sample]), [sample.question], max_new_tokens=4)[0]
    assert parse_answer("yes_no", answer) is not None, answer
    missing = client.get(f"/v1/runs/{full_run['run']['id']}/checkpoints/99/download")
    assert missing.status_code == 404


def _train_steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["step"] for e in events if e["type"] == "train_step"]


def _wait_step(client: httpx.Client, run_id: str, step: int) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] not in {"failed", "succeeded", "cancelled"}, run
        return run if run["latest_metrics"].get("step", 0) >= step else None

    return services.wait_for(reached, timeout=240, interval=0.3, what=f"step {step}")


def test_killed_worker_is_resumed_by_a_new_one(
    client: httpx.Client, refs: dict[str, Any], stack: rh.Stack
) -> None:
    config = rh.quick_config(max_steps=4, save_steps=2)
    body = _body(refs, "killed", config, offline=False, evals=["pope_adversarial"])
    run_id = client.post("/v1/runs", json=body).json()["id"]
    _wait_step(client, run_id, 3)
    stack.kill_worker()
    killed_at = time.monotonic()
    stack.start_worker()
    run = rh.wait_status(client, run_id, {"succeeded", "failed"})
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 2
    assert time.monotonic() - killed_at < 200
    events = rh.all_events(client, run_id)
    types = [e["type"] for e in events]
    assert types.count("run_requeued") == 1 and types.count("run_started") == 2
    assert _train_steps(events) == [1, 2, 3, 4]  # step 3, run again from checkpoint 2, recorded once
    loss = client.get(f"/v1/runs/{run_id}/metrics").json()["series"]["loss"]
    assert [p["step"] for p in loss] == [1, 2, 3, 4]
    counts = Counter((e["stage"], e["type"]) for e in events)
    assert counts[("training", "stage_started")] == 2  # entered again by attempt 2
    assert [c["step"] for c in client.get(f"/v1/runs/{run_id}/checkpoints").json()] == [2, 4]


def test_a_stopping_worker_hands_its_run_back_without_spending_an_attempt(
    client: httpx.Client, refs: dict[str, Any], stack: rh.Stack
) -> None:
    # Every checkpoint kept: the one written at the hand-back must still be listed at the end.
    config = rh.quick_config(max_steps=6, save_steps=1, keep_checkpoints=None)
    body = _body(refs, "graceful", config, offline=False, evals=["pope_adversarial"])
    run_id = client.post("/v1/runs", json=body).json()["id"]
    _wait_step(client, run_id, 2)
    worker = stack.workers[-1]
    worker.send_signal(signal.SIGTERM)  # a deploy: warm shutdown of the worker's main process
    stopped_at = time.monotonic()
    worker.wait(timeout=60)
    assert time.monotonic() - stopped_at < 60
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "training" and run["attempt"] == 0  # handed back, the attempt refunded
    events = rh.all_events(client, run_id)
    assert [e["type"] for e in events].count("run_released") == 1
    handed_back_at = _train_steps(events)[-1]

    stack.start_worker()  # the re-sent message: no wait for a lease to expire
    run = rh.wait_status(client, run_id, {"succeeded", "failed"})
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 1  # the whole run on its first attempt's budget
    events = rh.all_events(client, run_id)
    types = [e["type"] for e in events]
    assert "run_requeued" not in types and types.count("run_started") == 2
    assert _train_steps(events) == list(range(1, 7))  # every step once, resumed after the hand-back
    assert handed_back_at in [c["step"] for c in client.get(f"/v1/runs/{run_id}/checkpoints").json()]


def test_cancel_while_training_then_resume(client: httpx.Client, refs: dict[str, Any]) -> None:
    config = rh.quick_config(max_steps=6, save_steps=3)
    body = _body(refs, "cancelled", config, offline=False, evals=["pope_adversarial"])
    run_id = client.post("/v1/runs", json=body).json()["id"]
    at_cancel = _wait_step(client, run_id, 1)["latest_metrics"]["step"]
    cancelling = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelling.status_code == 200 and cancelling.json()["status"] in {"cancelling", "cancelled"}
    run = rh.wait_status(client, run_id, {"cancelled", "failed", "succeeded"}, timeout=120)
    assert run["status"] == "cancelled" and run["stage"] == "training"
    stopped = _train_steps(rh.all_events(client, run_id))[-1]
    assert stopped <= at_cancel + 2  # within two steps
    assert stopped in [c["step"] for c in client.get(f"/v1/runs/{run_id}/checkpoints").json()]
    resumed = client.post(f"/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    run = rh.wait_status(client, run_id, {"succeeded", "failed"})
    assert run["status"] == "succeeded", run["error"]
    events = rh.all_events(client, run_id)
    assert _train_steps(events) == list(range(1, 7))
    resumed_at = next(e["seq"] for e in events if e["type"] == "run_resumed")
    after_resume = [e["data"]["step"] for e in events if e["type"] == "train_step" and e["seq"] > resumed_at]
    assert after_resume[0] == stopped + 1
    finished = client.post(f"/v1/runs/{run_id}/cancel")
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "run_finished"


def test_a_failing_run_records_its_error(
    client: httpx.Client, refs: dict[str, Any], stack: rh.Stack, testbed: Path
) -> None:
    """The model directory vanished after registration: the run fails in `validating` with a code
    and a message, and is not left running."""
    copy = stack.base / "roots" / "vanishing-model"
    shutil.copytree(testbed / "base_model", copy)
    model = client.post("/v1/models", json={"name": "vanishing", "path": str(copy)}).json()
    shutil.rmtree(copy)
    body = {
        **_body(refs, "failing", rh.quick_config(), offline=False, evals=[]),
        "base_model_id": model["id"],
    }
    run_id = client.post("/v1/runs", json=body).json()["id"]
    run = rh.wait_status(client, run_id, {"failed", "succeeded"}, timeout=120)
    assert run["status"] == "failed" and run["stage"] == "validating"
    assert run["error"]["code"] == "invalid_model" and str(copy) in run["error"]["message"]
    last = rh.all_events(client, run_id)[-1]
    assert last["type"] == "run_failed" and last["level"] == "error"
    assert last["data"]["error_code"] == "invalid_model"
