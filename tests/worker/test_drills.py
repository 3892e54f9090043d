"""Fault drills on the real stack: `mbpo api` and `mbpo worker` subprocesses on a PostgreSQL and a
Redis of this module's own (tests/helpers/services.py), so that the tests can stop and restart
them, and with MBPO_HOME on a small filesystem of its own (a tmpfs), so that one test can fill it.

Each drill launches a short online-only run of the quick testbed and breaks something while it
trains: the database, the broker, the disk, the worker (killed, stopped gracefully, or robbed of
its lease), or the broker's messages (a pickle). docs/reliability.md cites these tests.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update

from infra.db.models import Run
from infra.db.session import make_engine, make_session_factory
from mbpo_core.models.loader import load_adapter
from tests.helpers import disk, services
from tests.helpers import runs as rh

HOME_MIB = 768
DB_OUTAGE_BUDGET_S = 8  # MBPO_DB_OUTAGE_SECONDS of this stack's worker
LEASE_S = 8


@pytest.fixture(scope="module")
def testbed() -> Path:
    return rh.quick_testbed()


@pytest.fixture(scope="module")
def pg() -> Iterator[services.PrivatePostgres]:
    with services.private_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.PrivateRedis]:
    with services.private_redis(tmp_path_factory.mktemp("drill-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bool]]:
    """MBPO_HOME, on a tmpfs of its own where this machine lets us mount one: (path, is small fs)."""
    where = tmp_path_factory.mktemp("drill-home")
    failed = disk.mount_tmpfs(where, HOME_MIB)
    try:
        yield where, failed is None
    finally:
        if failed is None:
            disk.unmount(where)


@pytest.fixture(scope="module")
def stack(
    pg: services.PrivatePostgres,
    redis_server: services.PrivateRedis,
    home: tuple[Path, bool],
    tmp_path_factory: pytest.TempPathFactory,
    testbed: Path,
) -> Iterator[rh.Stack]:
    base = tmp_path_factory.mktemp("drills")
    (base / "roots").mkdir()
    env = services.service_env(
        DATABASE_URL=pg.url("mbpo"),
        BROKER_URL=redis_server.url,
        MBPO_HOME=str(home[0]),
        MBPO_DATA_ROOTS=f"{base / 'roots'}:{testbed}",
        MBPO_ENV="test",
        MBPO_LEASE_SECONDS=str(LEASE_S),
        MBPO_SWEEP_SECONDS="1",
        MBPO_SSE_PING_SECONDS="1",
        MBPO_DB_OUTAGE_SECONDS=str(DB_OUTAGE_BUDGET_S),
        OMP_NUM_THREADS="2",
    )
    stack = rh.Stack(env=env, base=base)
    try:
        stack.start_api()
        stack.start_worker(concurrency=1)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def db(pg: services.PrivatePostgres) -> Iterator[Any]:
    engine = make_engine(pg.url("mbpo"), pool_size=2, max_overflow=0)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def client(stack: rh.Stack, db: Any) -> Iterator[httpx.Client]:
    from api.auth.service import create_api_key

    with db.begin() as session:
        _, key = create_api_key(session, user_name="driller", key_name="drills", admin=False)
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def refs(client: httpx.Client, stack: rh.Stack, testbed: Path) -> dict[str, str]:
    model = client.post("/v1/models", json={"name": "testbed", "path": str(testbed / "base_model")})
    assert model.status_code == 201, model.text
    ids = {"model": model.json()["id"]}
    for split, n in {"online": 16, "pope_adversarial": 8, "offline": 48}.items():
        path = rh.write_subset(testbed, split, stack.base / "roots" / split, n)
        created = client.post("/v1/datasets", json={"name": split, "path": str(path)})
        assert created.status_code == 201, created.text
        ids[split] = created.json()["id"]
        services.wait_for(
            lambda d=ids[split]: client.get(f"/v1/datasets/{d}").json()["status"] == "ready",
            timeout=120,
            what=f"dataset {split} ready",
        )
    return ids


def _launch(
    client: httpx.Client, refs: dict[str, str], name: str, *, offline: bool = False, **train: Any
) -> str:
    body = {
        "name": name,
        "base_model_id": refs["model"],
        "offline_dataset_id": refs["offline"] if offline else None,
        "online_dataset_id": refs["online"],
        "eval_dataset_ids": [refs["pope_adversarial"]],
        "config": rh.quick_config(**{"max_steps": 6, "save_steps": 1, **train}),
    }
    created = client.post("/v1/runs", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _wait_step(client: httpx.Client, run_id: str, step: int, timeout: float = 240) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
            assert run.get("status") not in {"failed", "succeeded", "cancelled"}, run
            if run.get("latest_metrics", {}).get("step", 0) >= step:
                return run
        return None

    return services.wait_for(reached, timeout=timeout, interval=0.2, what=f"run {run_id} step {step}")


def _finished(client: httpx.Client, run_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
            if run.get("status") in {"succeeded", "failed", "cancelled"}:
                return run
        return None

    return services.wait_for(done, timeout=timeout, interval=0.5, what=f"run {run_id} to finish")


def _steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["step"] for e in events if e["type"] == "train_step"]


def _assert_gap_free(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


class SSEFollower:
    """Follows a run's event stream in a thread until a terminal event, reconnecting with
    Last-Event-ID whenever the stream breaks (as EventSource does)."""

    TERMINAL = frozenset({"run_succeeded", "run_failed", "run_cancelled"})

    def __init__(self, client: httpx.Client, run_id: str):
        self.client, self.run_id = client, run_id
        self.events: list[dict[str, Any]] = []
        self.reconnects = 0
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            last = self.events[-1]["seq"] if self.events else None
            try:
                got, _, _ = rh.read_sse(
                    self.client, f"/v1/runs/{self.run_id}/events/stream", last_event_id=last, timeout=30
                )
                self.events += got
            except (httpx.HTTPError, AssertionError):
                self.reconnects += 1
                time.sleep(0.5)
            if self.events and self.events[-1]["type"] in self.TERMINAL:
                return

    def join(self) -> list[dict[str, Any]]:
        self.thread.join(timeout=420)
        return self.events


# ---- the database ---------------------------------------------------------------------------------


def test_a_database_restart_mid_run_costs_no_attempt(
    client: httpx.Client, refs: dict[str, str], pg: services.PrivatePostgres
) -> None:
    run_id = _launch(client, refs, "pg-restart")
    follower = SSEFollower(client, run_id)
    _wait_step(client, run_id, 2)
    pg.stop()  # every connection dropped, as in a restart or a failover
    time.sleep(DB_OUTAGE_BUDGET_S / 2)
    pg.start()
    run = _finished(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 1  # rode through: no attempt spent
    events = rh.all_events(client, run_id)
    _assert_gap_free(events)
    assert _steps(events) == list(range(1, 7))  # every step recorded once
    assert [e["type"] for e in events].count("run_started") == 1
    streamed = follower.join()
    assert [e["seq"] for e in streamed] == [e["seq"] for e in events]  # SSE missed nothing


def test_a_database_outage_beyond_the_budget_ends_the_attempt_cleanly(
    client: httpx.Client, refs: dict[str, str], pg: services.PrivatePostgres
) -> None:
    run_id = _launch(client, refs, "pg-outage")
    _wait_step(client, run_id, 2)
    pg.stop()
    time.sleep(DB_OUTAGE_BUDGET_S + 6)  # the worker gives up after its budget
    pg.start()
    run = _finished(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 2  # the abandoned attempt was re-queued once its lease expired
    events = rh.all_events(client, run_id)
    _assert_gap_free(events)
    types = [e["type"] for e in events]
    assert types.count("run_requeued") == 1 and types.count("run_started") == 2
    assert _steps(events) == list(range(1, 7))


# ---- the broker -----------------------------------------------------------------------------------


def test_a_broker_restart_mid_run_is_ridden_through(
    client: httpx.Client, refs: dict[str, str], redis_server: services.PrivateRedis
) -> None:
    run_id = _launch(client, refs, "redis-restart")
    follower = SSEFollower(client, run_id)
    _wait_step(client, run_id, 2)
    redis_server.stop()
    time.sleep(3)
    redis_server.start()  # same port, empty (no persistence)
    run = _finished(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 1
    events = rh.all_events(client, run_id)
    _assert_gap_free(events)
    assert _steps(events) == list(range(1, 7))
    streamed = follower.join()
    assert [e["seq"] for e in streamed] == [e["seq"] for e in events]


class _Exploit:
    """Would touch `marker` if a worker ever unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_message_is_refused_and_nothing_runs(
    client: httpx.Client, refs: dict[str, str], stack: rh.Stack, tmp_path: Path
) -> None:
    from kombu import Connection, Exchange, Queue

    marker = tmp_path / "unpickled"
    payload = pickle.dumps(([_Exploit(marker)], {}, {}))
    with Connection(stack.env["BROKER_URL"]) as conn:
        producer = conn.Producer()
        producer.publish(
            payload,
            exchange=Exchange("gpu", type="direct"),
            routing_key="gpu",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": "mbpo.runs.execute", "id": str(uuid.uuid4()), "argsrepr": "()"},
            # The broker restart drill emptied Redis, bindings included: declare the route again.
            declare=[Queue("gpu", Exchange("gpu", type="direct"), routing_key="gpu")],
        )
    services.wait_for(
        lambda: "untrusted content" in stack.worker_logs() or None, timeout=30, what="the refusal in the log"
    )
    assert not marker.exists()
    # The worker goes on working.
    run_id = _launch(client, refs, "after-pickle", max_steps=1)
    assert _finished(client, run_id)["status"] == "succeeded"
    assert not marker.exists()


# ---- the worker -------------------------------------------------------------------------------------


def test_a_stale_worker_writes_nothing(
    client: httpx.Client, refs: dict[str, str], stack: rh.Stack, db: Any, home: tuple[Path, bool]
) -> None:
    """The run's lease is taken from its worker (as when a paused worker's lease expired and the
    sweeper gave the run away): the worker stops without another checkpoint, stage result or event."""
    run_id = _launch(client, refs, "stale", max_steps=40)
    _wait_step(client, run_id, 2)
    with db.begin() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(lease_owner="thief", lease_expires_at=text("now() + interval '1 hour'"))
        )
    stolen_at = time.monotonic()
    time.sleep(0.5)  # a rename that passed the fence before the theft has landed by now
    checkpoints = home[0] / "runs" / run_id / "training" / "checkpoints"
    before = rh.checkpoint_dirs(checkpoints)
    last_seq = rh.all_events(client, run_id)[-1]["seq"]
    services.wait_for(
        lambda: "lease lost" in stack.worker_logs() or None, timeout=30, what="the worker to notice"
    )
    time.sleep(2)  # what a stale worker would write next (a step takes a fraction of a second)
    assert time.monotonic() - stolen_at < 30
    assert rh.checkpoint_dirs(checkpoints) == before
    assert not list(checkpoints.glob(".staging-*"))
    assert rh.all_events(client, run_id)[-1]["seq"] == last_seq
    assert not (home[0] / "runs" / run_id / "stages" / "training.json").exists()
    # The thief gives up its lease; the sweeper re-queues the run and it finishes.
    with db.begin() as session:
        session.execute(
            update(Run).where(Run.id == run_id).values(lease_expires_at=text("now() - interval '1 second'"))
        )
    run = _finished(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert _steps(rh.all_events(client, run_id)) == list(range(1, 41))


def test_a_worker_killed_over_and_over_is_bounded_by_max_attempts(
    client: httpx.Client, refs: dict[str, str], stack: rh.Stack, db: Any
) -> None:
    run_id = _launch(client, refs, "killed-twice", max_steps=40)
    with db.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(max_attempts=2))
    for attempt in (1, 2):
        services.wait_for(
            lambda n=attempt: client.get(f"/v1/runs/{run_id}").json()["attempt"] == n or None,
            timeout=120,
            what=f"attempt {attempt}",
        )
        _wait_step(client, run_id, 1)
        stack.kill_worker()
        stack.start_worker(concurrency=1)
    run = _finished(client, run_id, timeout=120)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "attempts_exhausted"
    assert "attempt 2 of 2" in run["error"]["message"]


def test_three_graceful_restarts_cost_no_attempt(
    client: httpx.Client, refs: dict[str, str], stack: rh.Stack
) -> None:
    run_id = _launch(client, refs, "deploys", max_steps=12)
    for at_step in (2, 5, 8):
        _wait_step(client, run_id, at_step)
        worker = stack.workers[-1]
        worker.send_signal(signal.SIGTERM)  # a deploy
        worker.wait(timeout=60)
        stack.start_worker(concurrency=1)
    run = _finished(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempt"] == 1  # three hand-backs, each attempt refunded
    events = rh.all_events(client, run_id)
    assert [e["type"] for e in events].count("run_released") == 3
    assert _steps(events) == list(range(1, 13))


# ---- cancel -----------------------------------------------------------------------------------------


def test_cancel_before_the_first_step_takes_effect_within_10s(
    client: httpx.Client, refs: dict[str, str]
) -> None:
    """Cancelled while it scores and mines its offline data (no training step yet)."""
    run_id = _launch(client, refs, "early-cancel", offline=True, max_steps=40)

    def mining() -> bool:
        return client.get(f"/v1/runs/{run_id}").json()["status"] in {"scoring", "mining"}

    services.wait_for(lambda: mining() or None, timeout=120, interval=0.05, what="scoring or mining")
    asked = time.monotonic()
    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 200
    run = _finished(client, run_id, timeout=30)
    assert run["status"] == "cancelled"
    assert time.monotonic() - asked < 10
    assert not _steps(rh.all_events(client, run_id))


# ---- the disk ---------------------------------------------------------------------------------------


def test_a_full_disk_while_saving_fails_cleanly_and_resumes_once_there_is_space(
    client: httpx.Client, refs: dict[str, str], home: tuple[Path, bool]
) -> None:
    root, small = home
    if not small:
        disk.skip_without_mount("MBPO_HOME is not on a filesystem of its own")
    run_id = _launch(client, refs, "disk-full", max_steps=8)
    _wait_step(client, run_id, 2)
    ballast = disk.fill(root, leave_bytes=256 * 1024)
    try:
        run = _finished(client, run_id)
        assert run["status"] == "failed"
        assert run["error"]["code"] == "disk_full", run["error"]
        assert "resume" in run["error"]["message"]
        checkpoints = root / "runs" / run_id / "training" / "checkpoints"
        assert not list(checkpoints.glob(".staging-*"))  # the half-written one is gone
        kept = client.get(f"/v1/runs/{run_id}/checkpoints").json()
        assert kept, "no checkpoint survived"
        newest = checkpoints / f"checkpoint-{kept[-1]['step']}" / "model"
    finally:
        ballast.unlink()
    load_adapter(newest, device="cpu")  # complete and loadable
    resumed = client.post(f"/v1/runs/{run_id}/resume")
    assert resumed.status_code == 200, resumed.text
    run = _finished(client, run_id)
    assert run["status"] == "succeeded", run["error"]
    assert _steps(rh.all_events(client, run_id)) == list(range(1, 9))
