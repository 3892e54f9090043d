"""Worker metrics: the endpoint a worker serves (runs by status from a real PostgreSQL, queue depths
from a real Redis), what a run's progress exports, a pool child's values reaching the endpoint of
its parent through the multiprocess files, and the issue's must-show: after a quick testbed run
through `mbpo api --workers 2` and `mbpo worker`, both endpoints show the requests and the run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import create_api_key
from infra.jobs import TaskName, get_celery
from infra.runs.repository import ExecutionRepository
from infra.settings import Settings
from mbpo_core.pipeline.stages import StageProgress
from tests.helpers import rows, services
from tests.helpers import runs as rh
from worker import metrics
from worker.metrics import RunExport, serve_metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def settings(committed_db: str) -> Iterator[Settings]:
    services.require_redis()
    prefix = services.broker_prefix()
    yield Settings(
        env="test",
        database_url=committed_db,
        broker_url=services.REDIS_URL,
        broker_key_prefix=prefix,
        worker_metrics_port=services.free_port(),
    )
    services.delete_redis_prefix(prefix)


def test_the_endpoint_shows_runs_by_status_and_queue_depths(
    settings: Settings, pg_factory: sessionmaker[Session]
) -> None:
    owner, model = rows.owner_and_model(pg_factory)
    for status in ("queued", "queued", "training", "succeeded"):
        rows.make_run(pg_factory, owner, model, status=status)
    celery = get_celery(settings)
    for _ in range(3):  # nobody consumes this prefix: the messages wait in the gpu list
        celery.send_task(TaskName.execute_run.value, args=["run-x"])
    celery.send_task(TaskName.validate_dataset.value, args=["dataset-x"])

    server = serve_metrics(settings)
    try:
        scrape = httpx.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", timeout=10)
    finally:
        server.shutdown()
    assert scrape.status_code == 200
    values = samples(scrape.text)
    runs = {labels[0][1]: v for (name, labels), v in values.items() if name == "mbpo_runs"}
    assert runs["queued"] == 2 and runs["training"] == 1 and runs["succeeded"] == 1
    assert runs["failed"] == 0 and len(runs) == 10  # every status, none missing
    assert values[("mbpo_queue_depth", (("queue", "gpu"),))] == 3
    assert values[("mbpo_queue_depth", (("queue", "cpu"),))] == 1
    assert values[("mbpo_queue_depth", (("queue", "inference"),))] == 0
    assert values[("mbpo_metrics_source_up", (("source", "database"),))] == 1
    assert values[("mbpo_metrics_source_up", (("source", "broker"),))] == 1
    assert values[("mbpo_worker_memory_rss_bytes", ())] > 10 * 1024 * 1024


def test_an_unreachable_broker_is_reported_not_raised(committed_db: str) -> None:
    settings = Settings(
        env="test",
        database_url=committed_db,
        broker_url=f"redis://127.0.0.1:{services.free_port()}/0",
        worker_metrics_port=services.free_port(),
    )
    server = serve_metrics(settings)
    try:
        scrape = httpx.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", timeout=10)
    finally:
        server.shutdown()
    values = samples(scrape.text)
    assert values[("mbpo_metrics_source_up", (("source", "broker"),))] == 0
    assert not any(name == "mbpo_queue_depth" for name, _ in values)
    assert values[("mbpo_metrics_source_up", (("source", "database"),))] == 1


def test_a_taken_port_leaves_the_worker_running(settings: Settings) -> None:
    first = serve_metrics(settings)
    try:
        assert serve_metrics(settings) is None
    finally:
        first.shutdown()
    assert serve_metrics(Settings(env="test", worker_metrics_port=0)) is None


def _value(metric: Any, suffix: str = "") -> float:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                return float(sample.value)
    raise AssertionError(suffix)


def test_run_export_times_steps_and_counts_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 102.0, 103.0, 107.0])
    monkeypatch.setattr(metrics.time, "monotonic", lambda: next(clock))
    steps, seconds = _value(metrics.STEP_SECONDS, "_count"), _value(metrics.STEP_SECONDS, "_sum")
    tokens = _value(metrics.TRAIN_TOKENS, "_total")
    export = RunExport()
    for step, total in ((4, 1000.0), (5, 1400.0), (6, 1800.0), (8, 2600.0)):
        export.progress(StageProgress("training", step, 10, "step", step=step, metrics={"num_tokens": total}))
    export.progress(StageProgress("mining", 3, 12, "attack"))  # not a step: times nothing
    # The first step after a start only sets the mark; then 2 s, 1 s, and 4 s for two steps.
    assert _value(metrics.STEP_SECONDS, "_count") - steps == 3
    assert _value(metrics.STEP_SECONDS, "_sum") - seconds == pytest.approx(2 + 1 + 2)
    assert _value(metrics.TRAIN_TOKENS, "_total") - tokens == 1600


def test_run_export_keeps_the_last_attack_success_rate() -> None:
    export = RunExport()
    export.stage_completed("mining", {"attack_success_rate": 0.375, "n_pairs": 3})
    assert _value(metrics.ATTACK_SUCCESS) == 0.375
    export.stage_completed("mining", {"attack_success_rate": None})  # nothing attacked: kept
    export.stage_completed("evaluating", {"attack_success_rate": 0.9})
    assert _value(metrics.ATTACK_SUCCESS) == 0.375


# A worker in miniature, in multiprocess mode as `mbpo worker` runs it: a forked child (a pool
# child) reports training steps and a mining result, exits; the parent serves the endpoint.
POOL = """
import json, multiprocessing, sys
import httpx
from infra.metrics import multiprocess_dir
from infra.settings import Settings

with multiprocess_dir() as path:
    from mbpo_core.pipeline.stages import StageProgress
    from worker.metrics import RunExport, serve_metrics

    def run():
        export = RunExport()
        for step in (1, 2, 3):
            export.progress(StageProgress("training", step, 3, "step", step=step,
                                          metrics={"num_tokens": 500.0 * step}))
        export.stage_completed("mining", {"attack_success_rate": 0.25})

    child = multiprocessing.get_context("fork").Process(target=run)
    child.start()
    child.join()
    settings = Settings(**json.loads(sys.argv[1]))
    server = serve_metrics(settings)
    print(httpx.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", timeout=10).text)
    server.shutdown()
"""


def test_a_pool_childs_metrics_reach_the_parents_endpoint(settings: Settings) -> None:
    args = {
        "env": "test",
        "database_url": settings.database_url,
        "broker_url": settings.broker_url,
        "broker_key_prefix": settings.broker_key_prefix,
        "worker_metrics_port": settings.worker_metrics_port,
    }
    env = services.service_env()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(POOL), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=services.REPO_ROOT,
        env=env,
        check=True,
    ).stdout
    values = samples(out)
    assert values[("mbpo_train_step_seconds_count", ())] == 2
    assert values[("mbpo_train_tokens_total", ())] == 1000
    assert values[("mbpo_mining_attack_success_rate", ())] == 0.25
    assert ("mbpo_runs", (("status", "queued"),)) in values


def test_after_a_run_both_endpoints_show_requests_run_and_training(
    committed_db: str, pg_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    services.require_redis()
    testbed = rh.quick_testbed()
    (tmp_path / "roots").mkdir()
    prefix = services.broker_prefix()
    port, worker_port = services.free_port(), services.free_port()
    env = services.service_env(
        DATABASE_URL=committed_db,
        BROKER_URL=services.REDIS_URL,
        MBPO_BROKER_KEY_PREFIX=prefix,
        MBPO_HOME=str(tmp_path / "home"),
        MBPO_DATA_ROOTS=f"{tmp_path / 'roots'}:{testbed}",
        MBPO_ENV="test",
        MBPO_WORKER_METRICS_PORT=str(worker_port),
        OMP_NUM_THREADS="2",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # Two API processes and a prefork worker: every value below crossed a process boundary.
    api = services.start_mbpo(["api", "--port", str(port), "--workers", "2"], env, tmp_path / "api.log")
    worker = services.start_mbpo(
        ["worker", "--queues", "cpu,gpu", "--concurrency", "2"], env, tmp_path / "worker.log"
    )
    try:
        services.wait_for(
            lambda: "ready." in (tmp_path / "worker.log").read_text(errors="replace"),
            timeout=90,
            what="worker",
        )
        with pg_factory.begin() as session:
            _, key = create_api_key(session, user_name="metrics", key_name="metrics", admin=False)
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        def api_up() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        services.wait_for(api_up, timeout=90, what="mbpo api")
        model = client.post("/v1/models", json={"name": "testbed", "path": str(testbed / "base_model")})
        assert model.status_code == 201, model.text
        ids = {}
        for split, n in {"offline": 40, "online": 32, "pope_random": 16}.items():
            path = rh.write_subset(testbed, split, tmp_path / "roots" / split, n)
            created = client.post("/v1/datasets", json={"name": split, "path": str(path)})
            assert created.status_code == 201, created.text
            ids[split] = created.json()["id"]
        for dataset_id in ids.values():
            services.wait_for(
                lambda d=dataset_id: client.get(f"/v1/datasets/{d}").json()["status"] == "ready",
                timeout=120,
                what="dataset ready",
            )
        body = {
            "name": "metrics",
            "base_model_id": model.json()["id"],
            "offline_dataset_id": ids["offline"],
            "online_dataset_id": ids["online"],
            "eval_dataset_ids": [ids["pope_random"]],
            "config": rh.quick_config(),
        }
        created = client.post("/v1/runs", json=body)
        assert created.status_code == 201, created.text
        run = created.json()
        assert client.get("/v1/runs/run_nosuchrun").status_code == 404
        assert rh.wait_status(client, run["id"], {"succeeded", "failed"})["status"] == "succeeded"

        with pg_factory() as session:
            succeeded = ExecutionRepository(session).runs_by_status()["succeeded"]  # this module's runs

        # The run gauges are cached for 5 s and both API processes answer scrapes: wait for the count.
        def scrapes() -> tuple[Any, Any] | None:
            api_values = samples(httpx.get(f"{url}/metrics", timeout=10).text)
            worker_values = samples(httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text)
            done = ("mbpo_runs", (("status", "succeeded"),))
            counts = (api_values.get(done), worker_values.get(done))
            return (api_values, worker_values) if counts == (succeeded, succeeded) else None

        api_values, worker_values = services.wait_for(scrapes, timeout=30, what="run gauges")
    finally:
        services.stop_process_group(worker)
        services.stop_process_group(api)
        services.delete_redis_prefix(prefix)
    polled = (
        "mbpo_http_requests_total",
        (("method", "GET"), ("route", "/v1/runs/{run_id}"), ("status", "200")),
    )
    assert api_values[polled] >= 1
    missing = (
        "mbpo_http_requests_total",
        (("method", "GET"), ("route", "/v1/runs/{run_id}"), ("status", "404")),
    )
    assert api_values[missing] == 1
    created = (("method", "POST"), ("route", "/v1/runs"), ("status_class", "2xx"))
    assert api_values[("mbpo_http_request_duration_seconds_count", created)] == 1
    assert api_values[("mbpo_queue_depth", (("queue", "gpu"),))] == 0
    # quick_config trains 3 steps: the first sets the mark, two are timed.
    assert worker_values[("mbpo_train_step_seconds_count", ())] == 2
    assert worker_values[("mbpo_train_tokens_total", ())] > 0
    assert 0 <= worker_values[("mbpo_mining_attack_success_rate", ())] <= 1
    assert worker_values[("mbpo_worker_memory_rss_bytes", ())] > 0
