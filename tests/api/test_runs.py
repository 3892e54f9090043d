"""/v1/runs on PostgreSQL (a rolled-back transaction per test) with Redis as the broker: creation
and its validation (nothing queued on bad input), idempotency, cancel/resume state rules, events
and the SSE replay, pagination, and the path safety of artefact and checkpoint downloads."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.runs.stream import event_stream, get_hub
from infra.db.base import utcnow
from infra.db.models import Artefact, BaseModelRecord, Checkpoint, Dataset, Run
from infra.events.store import append_event
from infra.runs.lifecycle import RunStatus
from infra.settings import Settings
from tests.api.conftest import KeyFor
from tests.helpers import services


@pytest.fixture
def gpu_queue(settings: Settings) -> Iterator[Any]:
    client = redis.Redis.from_url(services.REDIS_URL)

    def length() -> int:
        return int(client.llen(f"{settings.broker_key_prefix}gpu"))  # type: ignore[arg-type]

    yield length
    client.close()


def _model(factory: sessionmaker[Session], owner: KeyFor) -> str:
    with factory.begin() as session:
        row = BaseModelRecord(
            owner_id=owner.user_id,
            name="m",
            path="/nowhere/model",
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=["Qwen2VLForConditionalGeneration"],
            param_count=1,
        )
        session.add(row)
        session.flush()
        return row.id


def _dataset(factory: sessionmaker[Session], owner: KeyFor, status: str = "ready", tasks: Any = None) -> str:
    with factory.begin() as session:
        row = Dataset(
            owner_id=owner.user_id,
            name="d",
            source="path",
            root_path="/nowhere",
            manifest_name="manifest.jsonl",
            status=status,
            task_counts=tasks if tasks is not None else {"yes_no": 10},
        )
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
def refs(session_factory: sessionmaker[Session], alice: KeyFor) -> dict[str, str]:
    return {
        "model": _model(session_factory, alice),
        "offline": _dataset(session_factory, alice),
        "online": _dataset(session_factory, alice),
        "eval": _dataset(session_factory, alice),
    }


def _body(refs: dict[str, str], **changes: Any) -> dict[str, Any]:
    body = {
        "name": "r",
        "base_model_id": refs["model"],
        "offline_dataset_id": refs["offline"],
        "online_dataset_id": refs["online"],
        "eval_dataset_ids": [refs["eval"]],
        "config": {"train": {"max_steps": 5}},
    }
    body.update(changes)
    return body


def _run_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return session.query(Run).count()


def test_create_queues_one_job_and_reads_back(
    client: TestClient, alice: KeyFor, refs: dict[str, str], gpu_queue: Any
) -> None:
    before = gpu_queue()
    created = client.post("/v1/runs", json=_body(refs), headers=alice.headers)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "queued" and run["stage"] is None and run["progress"] == 0
    assert run["attempt"] == 0 and run["max_attempts"] == 3 and run["error"] is None
    assert run["config"]["train"]["max_steps"] == 5 and run["config"]["attack"]["steps"] == 10
    assert gpu_queue() == before + 1
    assert client.get(f"/v1/runs/{run['id']}", headers=alice.headers).json()["id"] == run["id"]
    events = client.get(f"/v1/runs/{run['id']}/events", headers=alice.headers).json()
    assert [(e["seq"], e["type"]) for e in events["data"]] == [(1, "run_queued")]
    assert events["last_seq"] == 1


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [
        ({"config": {"train": {"max_stepz": 3}}}, 422, "validation_error", "config.train.max_stepz"),
        ({"config": {"attack": {"eps": 0.01, "step_size": 0.5}}}, 422, "validation_error", "config.attack"),
        ({"base_model_id": "mdl_missing"}, 422, "model_not_found", "base_model_id"),
        (
            {"offline_dataset_id": None, "online_dataset_id": None},
            422,
            "no_training_data",
            "offline_dataset_id",
        ),
        ({"surprise": 1}, 422, "validation_error", "surprise"),
        # Specs that would take a worker host down are refused, naming the field.
        ({"config": {"train": {"max_steps": 10**12}}}, 422, "validation_error", "config.train.max_steps"),
        (
            {"config": {"train": {"num_generations": 10**6}}},
            422,
            "validation_error",
            "config.train.num_generations",
        ),
        (
            {"config": {"train": {"prompts_per_step": 10**6}}},
            422,
            "validation_error",
            "config.train.prompts_per_step",
        ),
        (
            {"config": {"train": {"learning_rate": 1e308}}},
            422,
            "validation_error",
            "config.train.learning_rate",
        ),
        (
            {"config": {"train": {"learning_rate": float("inf")}}},
            422,
            "validation_error",
            "config.train.learning_rate",
        ),
        ({"config": {"train": {"max_steps": "20"}}}, 422, "validation_error", "config.train.max_steps"),
        ({"config": {"mining": {"do_sample": 1}}}, 422, "validation_error", "config.mining.do_sample"),
        ({"config": {"seed": 2**70}}, 422, "validation_error", "config.seed"),
        (
            {"config": {"train": {"max_steps": 1_000_000, "prompts_per_step": 4096, "num_generations": 256}}},
            422,
            "validation_error",
            "config.train",
        ),
    ],
)
def test_bad_input_is_a_clear_4xx_and_queues_nothing(
    client: TestClient,
    alice: KeyFor,
    refs: dict[str, str],
    gpu_queue: Any,
    session_factory: sessionmaker[Session],
    change: dict[str, Any],
    status: int,
    code: str,
    field: str,
) -> None:
    before = gpu_queue()
    # Python's own encoder: it writes Infinity, which a client may send and the API must refuse.
    content = json.dumps(_body(refs, **change))
    headers = {**alice.headers, "Content-Type": "application/json"}
    response = client.post("/v1/runs", content=content, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["field"].startswith(field)
    assert gpu_queue() == before and _run_count(session_factory) == 0


def test_datasets_must_be_the_callers_and_ready(
    client: TestClient,
    alice: KeyFor,
    bob: KeyFor,
    refs: dict[str, str],
    gpu_queue: Any,
    session_factory: sessionmaker[Session],
) -> None:
    before = gpu_queue()
    cases = {
        "offline_dataset_id": (_dataset(session_factory, bob), "dataset_not_found"),
        "online_dataset_id": (_dataset(session_factory, alice, status="validating"), "dataset_not_ready"),
    }
    for field, (dataset_id, code) in cases.items():
        response = client.post("/v1/runs", json=_body(refs, **{field: dataset_id}), headers=alice.headers)
        assert response.status_code == 422 and response.json()["error"]["code"] == code
        assert response.json()["error"]["field"] == field
    invalid_eval = _dataset(session_factory, alice, status="invalid")
    response = client.post(
        "/v1/runs", json=_body(refs, eval_dataset_ids=[invalid_eval]), headers=alice.headers
    )
    assert response.status_code == 422 and response.json()["error"]["field"] == "eval_dataset_ids.0"
    open_only = _dataset(session_factory, alice, tasks={"open": 5})
    response = client.post("/v1/runs", json=_body(refs, online_dataset_id=open_only), headers=alice.headers)
    assert response.status_code == 422 and response.json()["error"]["code"] == "dataset_unsuitable"
    assert gpu_queue() == before and _run_count(session_factory) == 0


def test_idempotency_key(client: TestClient, alice: KeyFor, refs: dict[str, str], gpu_queue: Any) -> None:
    before = gpu_queue()
    headers = {**alice.headers, "Idempotency-Key": "k-1"}
    first = client.post("/v1/runs", json=_body(refs), headers=headers)
    again = client.post("/v1/runs", json=_body(refs), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/runs", json=_body(refs, name="other"), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert gpu_queue() == before + 1


def _run(factory: sessionmaker[Session], owner: KeyFor, refs: dict[str, str], **values: Any) -> str:
    with factory.begin() as session:
        run = Run(
            owner_id=owner.user_id,
            name=values.pop("name", "r"),
            base_model_id=refs["model"],
            online_dataset_id=refs["online"],
            config={},
            stage_progress={},
            latest_metrics={},
            **values,
        )
        session.add(run)
        session.flush()
        return run.id


def test_cancel_rules(
    client: TestClient, alice: KeyFor, refs: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    queued = _run(session_factory, alice, refs)
    response = client.post(f"/v1/runs/{queued}/cancel", headers=alice.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"  # nobody held it
    again = client.post(f"/v1/runs/{queued}/cancel", headers=alice.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"

    held = _run(
        session_factory,
        alice,
        refs,
        status=RunStatus.training,
        stage="training",
        lease_owner="w1",
        lease_expires_at=utcnow() + timedelta(minutes=1),
    )
    response = client.post(f"/v1/runs/{held}/cancel", headers=alice.headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    assert response.json()["cancel_requested_at"] is not None
    assert client.post(f"/v1/runs/{held}/cancel", headers=alice.headers).json()["status"] == "cancelling"
    types = [e["type"] for e in client.get(f"/v1/runs/{held}/events", headers=alice.headers).json()["data"]]
    assert types == ["cancel_requested"]
    done = _run(session_factory, alice, refs, status=RunStatus.succeeded)
    assert client.post(f"/v1/runs/{done}/cancel", headers=alice.headers).status_code == 409


def test_resume_rules(
    client: TestClient,
    alice: KeyFor,
    refs: dict[str, str],
    session_factory: sessionmaker[Session],
    gpu_queue: Any,
) -> None:
    running = _run(session_factory, alice, refs, status=RunStatus.mining, stage="mining")
    response = client.post(f"/v1/runs/{running}/resume", headers=alice.headers)
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_resumable"
    failed = _run(
        session_factory,
        alice,
        refs,
        status=RunStatus.failed,
        stage="training",
        attempt=3,
        max_attempts=3,
        error_code="attempts_exhausted",
        error_message="gone",
        finished_at=utcnow(),
    )
    before = gpu_queue()
    response = client.post(f"/v1/runs/{failed}/resume", headers=alice.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "queued" and body["error"] is None and body["finished_at"] is None
    assert body["stage"] == "training" and body["attempt"] == 3 and body["max_attempts"] == 6
    assert gpu_queue() == before + 1


def test_list_filters_and_paginates(
    client: TestClient,
    alice: KeyFor,
    bob: KeyFor,
    refs: dict[str, str],
    session_factory: sessionmaker[Session],
) -> None:
    ids = [_run(session_factory, alice, refs, name=f"r{i}") for i in range(3)]
    done = _run(session_factory, alice, refs, status=RunStatus.succeeded)
    _run(
        session_factory,
        bob,
        {**refs, "model": _model(session_factory, bob), "online": _dataset(session_factory, bob)},
    )
    first = client.get("/v1/runs", params={"limit": 2, "status": "queued"}, headers=alice.headers).json()
    second = client.get(
        "/v1/runs",
        params={"limit": 2, "status": "queued", "cursor": first["next_cursor"]},
        headers=alice.headers,
    ).json()
    assert [r["id"] for r in first["data"] + second["data"]] == sorted(ids, reverse=True)
    assert second["next_cursor"] is None
    finished = client.get(
        "/v1/runs", params=[("status", "succeeded"), ("status", "failed")], headers=alice.headers
    )
    assert [r["id"] for r in finished.json()["data"]] == [done]
    assert client.get("/v1/runs", params={"status": "bogus"}, headers=alice.headers).status_code == 422


def test_another_users_run_is_not_found(
    client: TestClient,
    alice: KeyFor,
    bob: KeyFor,
    refs: dict[str, str],
    session_factory: sessionmaker[Session],
) -> None:
    run_id = _run(session_factory, alice, refs)
    for method, path in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("POST", "/resume"),
        ("GET", "/events"),
        ("GET", "/events/stream"),
        ("GET", "/metrics"),
        ("GET", "/negatives"),
        ("GET", "/checkpoints"),
        ("GET", "/artefacts"),
        ("GET", "/checkpoints/1/download"),
    ]:
        response = client.request(method, f"/v1/runs/{run_id}{path}", headers=bob.headers)
        assert response.status_code == 404, (path, response.text)
        assert client.request(method, f"/v1/runs/{run_id}{path}").status_code == 401


def test_events_after_must_be_a_number(
    client: TestClient, alice: KeyFor, refs: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    run_id = _run(session_factory, alice, refs)
    response = client.get(f"/v1/runs/{run_id}/events", params={"after": "abc"}, headers=alice.headers)
    assert response.status_code == 422 and response.json()["error"]["field"] == "after"
    stream = client.get(f"/v1/runs/{run_id}/events/stream", headers={**alice.headers, "Last-Event-ID": "x1"})
    assert stream.status_code == 422 and stream.json()["error"]["field"] == "Last-Event-ID"


def test_seqs_and_steps_are_bounded_by_their_integer_columns(
    client: TestClient, alice: KeyFor, refs: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    """Seqs and steps are INTEGER columns: a bigger number is a 422, never an overflow in the query
    (a 500 once the run exists); the largest one is simply past every event."""
    run_id = _run(session_factory, alice, refs, status=RunStatus.cancelled)
    h = alice.headers
    events = f"/v1/runs/{run_id}/events"
    assert client.get(events, params={"after": 2**31 - 1}, headers=h).json()["data"] == []
    for path, params, headers in [
        (events, {"after": 2**31}, h),
        (f"{events}/stream", {"after": 2**31}, h),
        (f"{events}/stream", {}, {**h, "Last-Event-ID": str(2**31)}),
        (f"/v1/runs/{run_id}/checkpoints/{2**31}/download", {}, h),
    ]:
        resp = client.get(path, params=params, headers=headers)
        assert resp.status_code == 422, (path, params, resp.text)
    assert client.get(f"/v1/runs/{run_id}/checkpoints/{2**31 - 1}/download", headers=h).status_code == 404
    assert client.get(f"/v1/models/run:{run_id}@{2**31}", headers=h).status_code == 404


def test_sse_replays_after_last_event_id_and_closes_after_the_end(
    client: TestClient, alice: KeyFor, refs: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    run_id = _run(session_factory, alice, refs, status=RunStatus.succeeded)
    with session_factory.begin() as session:
        for i in range(5):
            append_event(session, run_id, "stage_progress", f"e{i}", stage="training", data={"i": i})
        append_event(session, run_id, "run_succeeded", "done")
    with client.stream(
        "GET", f"/v1/runs/{run_id}/events/stream", headers={**alice.headers, "Last-Event-ID": "3"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    blocks = [b for b in text.split("\n\n") if b.startswith("id:")]
    ids = [int(b.split("\n")[0].removeprefix("id: ")) for b in blocks]
    assert ids == [4, 5, 6]
    assert "event: run_succeeded" in blocks[-1]
    assert json.loads(blocks[0].split("data: ", 1)[1])["message"] == "e3"


def _make_checkpoint(settings: Settings, factory: sessionmaker[Session], run_id: str, step: int) -> Path:
    ckpt = settings.home_dir / "runs" / run_id / "training" / "checkpoints" / f"checkpoint-{step}"
    model = ckpt / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"w" * 700)
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (model / "tokenizer.json").write_text("{}")
    (ckpt / "optimizer.pt").write_bytes(b"pickle")
    (model / "extra.pt").write_bytes(b"pickle")
    outside = settings.home_dir / "secret.json"
    outside.write_text('{"secret": 1}')
    (model / "linked.json").symlink_to(outside)
    with factory.begin() as session:
        session.add(
            Checkpoint(
                run_id=run_id,
                step=step,
                path=str(ckpt.relative_to(settings.home_dir)),
                complete=True,
                metrics={"loss": 0.5},
            )
        )
    return ckpt


def test_checkpoint_download_streams_only_model_files(
    client: TestClient,
    alice: KeyFor,
    refs: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    run_id = _run(session_factory, alice, refs, status=RunStatus.succeeded)
    _make_checkpoint(settings, session_factory, run_id, 2)
    listed = client.get(f"/v1/runs/{run_id}/checkpoints", headers=alice.headers).json()
    assert [(c["step"], c["download_url"]) for c in listed] == [
        (2, f"/v1/runs/{run_id}/checkpoints/2/download")
    ]
    response = client.get(listed[0]["download_url"], headers=alice.headers)
    assert response.status_code == 200 and int(response.headers["content-length"]) == len(response.content)
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = sorted(archive.getnames())
        weights = archive.extractfile("checkpoint-2/model.safetensors")
        assert weights is not None and weights.read() == b"w" * 700
    assert names == [
        "checkpoint-2/config.json",
        "checkpoint-2/model.safetensors",
        "checkpoint-2/tokenizer.json",
    ]
    with session_factory.begin() as session:
        session.add(Checkpoint(run_id=run_id, step=3, path="../../etc", complete=True, metrics={}))
    assert client.get(f"/v1/runs/{run_id}/checkpoints/3/download", headers=alice.headers).status_code == 404


def test_artefact_files_stay_inside_the_run(
    client: TestClient,
    alice: KeyFor,
    bob: KeyFor,
    refs: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    run_id = _run(session_factory, alice, refs, status=RunStatus.succeeded)
    mining = settings.home_dir / "runs" / run_id / "mining"
    (mining / "perturbed").mkdir(parents=True)
    (mining / "clean").mkdir()
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    (mining / "perturbed" / "a.png").write_bytes(png)
    (mining / "clean" / "a.png").write_bytes(png)
    (mining / "records.txt").write_text("no")
    pair = {
        "id": "s1",
        "image": "clean/a.png",
        "perturbed_image": "perturbed/a.png",
        "question": "Is there a cat?",
        "task": "yes_no",
        "chosen": "yes",
        "rejected": "no",
        "iig": 0.5,
        "logp_clean": -0.1,
        "logp_adv": -2.0,
        "prior_agreement": True,
    }
    (mining / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    with session_factory.begin() as session:
        artefact = Artefact(run_id=run_id, kind="mined_pairs", path=f"runs/{run_id}/mining/pairs.jsonl")
        session.add(artefact)
        session.flush()
        artefact_id = artefact.id
    page = client.get(f"/v1/runs/{run_id}/negatives", headers=alice.headers).json()
    assert page["total"] == 1 and page["next_cursor"] is None
    negative = page["data"][0]
    assert negative["clean_image_url"] == f"/v1/artefacts/{artefact_id}/files/clean/a.png"
    image = client.get(negative["perturbed_image_url"], headers=alice.headers)
    assert image.status_code == 200 and image.content == png and image.headers["content-type"] == "image/png"
    assert client.get(negative["perturbed_image_url"], headers=bob.headers).status_code == 404
    for bad in ["../../../secret.json", "records.txt", "%2e%2e/%2e%2e/x.png", "clean/missing.png"]:
        response = client.get(f"/v1/artefacts/{artefact_id}/files/{bad}", headers=alice.headers)
        assert response.status_code == 404, bad
    assert (
        client.get(f"/v1/runs/{run_id}/negatives", params={"cursor": "!!"}, headers=alice.headers).status_code
        == 422
    )


def test_a_closed_stream_leaves_no_subscription_behind(
    settings: Settings, alice: KeyFor, refs: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    """What the server does when a client disconnects: the stream generator is closed; its queue
    must leave the process's event hub (nothing accumulates for clients that are gone)."""
    run_id = _run(session_factory, alice, refs, status=RunStatus.training)
    with session_factory.begin() as session:
        append_event(session, run_id, "stage_started", "training started", stage="training")

    async def scenario() -> None:
        hub = get_hub(settings)
        assert hub is not None  # the broker is Redis: live delivery through the hub
        stream = event_stream(session_factory, settings, run_id, 0)
        assert await stream.__anext__() == b"retry: 2000\n\n"
        assert (await stream.__anext__()).startswith(b"id: 1\nevent: stage_started\n")
        assert hub.clients == 1 and run_id in hub.listeners
        await stream.aclose()
        assert hub.clients == 0 and run_id not in hub.listeners
        if hub.task is not None:
            hub.task.cancel()

    asyncio.run(scenario())


def test_events_with_non_finite_metrics_are_stored_as_valid_json(
    client: TestClient, alice: KeyFor, refs: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    """A metric of an empty group is NaN; JSONB (and JSON clients) refuse NaN, so it becomes null."""
    run_id = _run(session_factory, alice, refs, status=RunStatus.training)
    with session_factory.begin() as session:
        append_event(
            session, run_id, "train_step", "step 1", data={"metrics": {"kl": float("nan"), "loss": 0.5}}
        )
    events = client.get(f"/v1/runs/{run_id}/events", headers=alice.headers).json()["data"]
    assert events[0]["data"] == {"metrics": {"kl": None, "loss": 0.5}}


def test_negatives_export_is_a_trl_preference_parquet(
    client: TestClient,
    alice: KeyFor,
    bob: KeyFor,
    refs: dict[str, str],
    session_factory: sessionmaker[Session],
    settings: Settings,
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq
    from PIL import Image

    run_id = _run(session_factory, alice, refs, status=RunStatus.succeeded)
    export = f"/v1/runs/{run_id}/negatives/export"
    missing = client.get(export, headers=alice.headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    mining = settings.home_dir / "runs" / run_id / "mining"
    (mining / "clean").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(mining / "clean" / "a.png")
    pair = {
        "id": "s1",
        "image": "clean/a.png",
        "perturbed_image": "perturbed/a.png",
        "question": "Is there a cat?",
        "task": "yes_no",
        "chosen": "yes",
        "rejected": "no",
    }
    (mining / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    with session_factory.begin() as session:
        session.add(Artefact(run_id=run_id, kind="mined_pairs", path=f"runs/{run_id}/mining/pairs.jsonl"))
    resp = client.get(export, params={"format": "parquet"}, headers=alice.headers)
    assert resp.status_code == 200, resp.text
    assert f'filename="{run_id}-pairs.parquet"' in resp.headers["content-disposition"]
    (tmp_path / "p.parquet").write_bytes(resp.content)
    (row,) = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert row["prompt"][0]["content"][0]["type"] == "image"
    assert row["prompt"][0]["content"][1]["text"] == "Is there a cat?"
    assert (
        row["chosen"][0]["content"][0]["text"] == "yes" and row["rejected"][0]["content"][0]["text"] == "no"
    )
    assert row["images"][0]["bytes"] == (mining / "clean" / "a.png").read_bytes()
    assert client.get(export, headers=bob.headers).status_code == 404
    assert client.get(export, params={"format": "csv"}, headers=alice.headers).status_code == 422
