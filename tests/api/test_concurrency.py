"""The API under concurrency, on the real stack: a `mbpo api` process with two uvicorn workers on
PostgreSQL and Redis (committed data, as in production).

- 500 clients read at once (`GET /v1/datasets/{id}`, then another user's dataset or a page and the
  next one), each on its own connection: every answer is the right one, none is a 5xx and no
  connection is dropped.
- 50 runs are created at once, each with its Idempotency-Key and retried while the first attempt
  is still in flight (some attempts given up by the client before the answer): each run exists
  exactly once, every answer for a key names that run, none is a 5xx, and each run's job was
  sent once.

No timing is asserted here: latency goals live in bench/api_load.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from infra.db.models import BaseModelRecord, Dataset, DatasetStatus, Run, RunEvent
from tests.helpers import services

pytestmark = pytest.mark.services

READERS = 500
CREATIONS = 50
ATTEMPTS = 3  # sent at once for each key: the first attempt and two retries racing it


@dataclass(frozen=True)
class Server:
    url: str
    broker_prefix: str
    log: Path


@pytest.fixture(scope="module")
def server(committed_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    services.require_redis()
    base = tmp_path_factory.mktemp("concurrency")
    prefix = services.broker_prefix()
    env = services.service_env(
        DATABASE_URL=committed_db,
        BROKER_URL=services.REDIS_URL,
        MBPO_BROKER_KEY_PREFIX=prefix,
        MBPO_HOME=str(base / "home"),
        MBPO_ENV="test",
        MBPO_LOG_LEVEL="WARNING",
        MBPO_RATE_LIMIT_RUNS_PER_MINUTE="0",  # this test creates runs faster than a client may
    )
    port = services.free_port()
    log = base / "api.log"
    proc = services.start_mbpo(["api", "--port", str(port), "--workers", "2"], env, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        services.wait_for(up, timeout=90, interval=0.3, what="mbpo api")
        yield Server(url=url, broker_prefix=prefix, log=log)
    finally:
        services.stop_process_group(proc)
        services.delete_redis_prefix(prefix)


def _key(factory: sessionmaker[Session], user: str) -> tuple[str, str]:
    """(API key, user id) of a new user."""
    with factory.begin() as session:
        row, key = create_api_key(session, user_name=user, key_name=user, admin=False)
    return key, row.user_id


def _datasets(factory: sessionmaker[Session], owner_id: str, prefix: str, count: int) -> list[dict[str, Any]]:
    """`count` ready datasets, each with its own stats and report; returned oldest first."""
    rows = []
    with factory.begin() as session:
        for i in range(count):
            row = Dataset(
                owner_id=owner_id,
                name=f"{prefix}-{i}",
                source="path",
                root_path=f"/srv/{prefix}-{i}",
                manifest_name="manifest.jsonl",
                status=DatasetStatus.ready,
                num_samples=100 + i,
                task_counts={"yes_no": 60 + i, "number": 40},
                stats={"tasks": {"yes_no": {"count": 60 + i}}, "images": {"distinct": 100 + i}},
                report={"lines": 100 + i, "valid_samples": 100 + i, "error_count": 0, "errors": []},
            )
            session.add(row)
            session.flush()
            rows.append(row)
    return [
        {
            "id": r.id,
            "name": r.name,
            "status": "ready",
            "num_samples": r.num_samples,
            "task_counts": r.task_counts,
            "stats": r.stats,
            "report": r.report,
        }
        for r in rows
    ]


def _expect(body: dict[str, Any], dataset: dict[str, Any]) -> None:
    assert {k: body[k] for k in dataset} == dataset


def test_500_concurrent_readers_get_right_answers_and_no_5xx(
    server: Server, pg_factory: sessionmaker[Session]
) -> None:
    users = {}
    for user in ("reader-a", "reader-b"):
        key, user_id = _key(pg_factory, user)
        users[user] = (key, _datasets(pg_factory, user_id, user, 30))
    page_size = 10

    async def reader(i: int, client: httpx.AsyncClient, start: asyncio.Barrier) -> list[int]:
        """A dataset of its own, then another user's (404) or a page and the next one."""
        me, other = ("reader-a", "reader-b") if i % 2 == 0 else ("reader-b", "reader-a")
        key, mine = users[me]
        headers = {"Authorization": f"Bearer {key}"}
        wanted = mine[i % len(mine)]
        await start.wait()  # every client sends its first request at the same moment
        one = await client.get(f"/v1/datasets/{wanted['id']}", headers=headers)
        statuses = [one.status_code]
        if one.status_code == 200:
            _expect(one.json(), wanted)

        if i % 4 < 2:
            theirs = users[other][1]
            hidden = await client.get(f"/v1/datasets/{theirs[i % len(theirs)]['id']}", headers=headers)
            statuses.append(hidden.status_code)
            if hidden.status_code == 404:
                assert hidden.json()["error"]["code"] == "not_found"
            return statuses

        newest_first = mine[::-1]
        page = await client.get("/v1/datasets", params={"limit": page_size}, headers=headers)
        statuses.append(page.status_code)
        if page.status_code == 200:
            body = page.json()
            assert [d["id"] for d in body["data"]] == [d["id"] for d in newest_first[:page_size]]
            for got, dataset in zip(body["data"], newest_first, strict=False):
                _expect(got, {k: v for k, v in dataset.items() if k != "report"})
                assert "report" not in got
            following = await client.get(
                "/v1/datasets", params={"limit": page_size, "cursor": body["next_cursor"]}, headers=headers
            )
            statuses.append(following.status_code)
            if following.status_code == 200:
                assert [d["id"] for d in following.json()["data"]] == [
                    d["id"] for d in newest_first[page_size : 2 * page_size]
                ]
        return statuses

    async def main() -> list[int]:
        # 500 clients, each with its own connection (one shared pool of 500 connections would make
        # the client, not the server, the bottleneck). One TLS context for all: httpx would build
        # one per client, milliseconds each.
        tls = ssl.create_default_context()
        clients = [httpx.AsyncClient(base_url=server.url, timeout=120, verify=tls) for _ in range(READERS)]
        start = asyncio.Barrier(READERS)
        try:
            results = await asyncio.gather(*(reader(i, c, start) for i, c in enumerate(clients)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        return [status for statuses in results for status in statuses]

    statuses = Counter(asyncio.run(main()))
    assert statuses == {200: READERS + READERS // 2 * 2, 404: READERS // 2}, statuses
    assert "Traceback" not in server.log.read_text(errors="replace")


def _run_refs(factory: sessionmaker[Session], owner_id: str) -> dict[str, Any]:
    with factory.begin() as session:
        model = BaseModelRecord(
            owner_id=owner_id,
            name="m",
            path="/nowhere/model",
            family="qwen2_vl",
            model_type="qwen2_vl",
            architectures=["Qwen2VLForConditionalGeneration"],
            param_count=1,
        )
        session.add(model)
        session.flush()
        model_id = model.id
    online = _datasets(factory, owner_id, "online", 1)[0]["id"]
    return {"base_model_id": model_id, "online_dataset_id": online, "config": {"train": {"max_steps": 5}}}


def test_50_concurrent_creations_with_retries_make_each_run_once(
    server: Server, pg_factory: sessionmaker[Session]
) -> None:
    key, user_id = _key(pg_factory, "creator")
    refs = _run_refs(pg_factory, user_id)
    queue = redis.Redis.from_url(services.REDIS_URL)
    jobs_before = int(queue.llen(f"{server.broker_prefix}gpu"))  # type: ignore[arg-type]

    async def attempt(client: httpx.AsyncClient, i: int, *, patience: float | None) -> tuple[int, str] | None:
        """One POST for creation `i`; None when the client gave up waiting (`patience` seconds)."""
        timeout = httpx.Timeout(120, read=patience) if patience is not None else None
        try:
            response = await client.post(
                "/v1/runs",
                json={"name": f"run-{i}", **refs},
                headers={"Idempotency-Key": f"creation-{i}"},
                **({"timeout": timeout} if timeout is not None else {}),
            )
        except httpx.ReadTimeout:
            return None
        assert response.status_code in (200, 201), response.text
        if response.status_code == 200:
            assert response.headers["Idempotent-Replayed"] == "true"
        return response.status_code, response.json()["id"]

    async def creation(client: httpx.AsyncClient, i: int, start: asyncio.Barrier) -> list[tuple[int, str]]:
        await start.wait()
        # Every third creation's first attempt is given up almost at once (the client saw a
        # timeout): the server may or may not have created the run; the retries must not care.
        patience = 0.05 if i % 3 == 0 else None
        racing = await asyncio.gather(
            attempt(client, i, patience=patience),
            *(attempt(client, i, patience=None) for _ in range(ATTEMPTS - 1)),
        )
        late = await attempt(client, i, patience=None)  # a retry after everything answered
        return [a for a in (*racing, late) if a is not None]

    async def main() -> list[list[tuple[int, str]]]:
        limits = httpx.Limits(max_connections=CREATIONS * ATTEMPTS)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, limits=limits, timeout=120
        ) as client:
            start = asyncio.Barrier(CREATIONS)
            return await asyncio.gather(*(creation(client, i, start) for i in range(CREATIONS)))

    answers = asyncio.run(main())

    with pg_factory() as session:
        runs = session.execute(
            select(Run.idempotency_key, Run.id, Run.name).where(Run.owner_id == user_id)
        ).all()
        queued_events = dict(
            session.execute(
                select(RunEvent.run_id, func.count())
                .join(Run, Run.id == RunEvent.run_id)
                .where(Run.owner_id == user_id, RunEvent.type == "run_queued")
                .group_by(RunEvent.run_id)
            ).all()
        )
    by_key = {k: (run_id, name) for k, run_id, name in runs}
    assert len(runs) == len(by_key) == CREATIONS  # one row per key, no duplicate
    created: defaultdict[str, int] = defaultdict(int)
    for i, seen in enumerate(answers):
        run_id, name = by_key[f"creation-{i}"]
        assert name == f"run-{i}"
        assert seen and {answer_id for _, answer_id in seen} == {run_id}
        created[run_id] += sum(1 for status, _ in seen if status == 201)
    assert all(count <= 1 for count in created.values())
    assert queued_events == {run_id: 1 for run_id, _ in by_key.values()}

    def jobs() -> int:
        return int(queue.llen(f"{server.broker_prefix}gpu")) - jobs_before  # type: ignore[arg-type]

    # An attempt the client gave up on may still be sending its job (after its commit, which the
    # retries already saw): wait for all of them, then there must be exactly one per run.
    services.wait_for(lambda: jobs() >= CREATIONS, timeout=30, what="one job per run")
    assert jobs() == CREATIONS
    queue.close()
    assert "Traceback" not in server.log.read_text(errors="replace")
