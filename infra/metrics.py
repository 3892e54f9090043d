"""Prometheus metrics shared by the API (`GET /metrics`, api.metrics) and the workers (their
metrics port, worker.metrics): how a process group shares its metrics, what a scrape shows, and the
service-wide gauges read at scrape time.

- Several processes, one view: `mbpo api --workers N` (uvicorn processes) and `mbpo worker` (a run
  executes in a prefork pool child, the metrics port is served by the parent) run inside
  `multiprocess_dir()`, which points prometheus_client's multiprocess mode
  (`PROMETHEUS_MULTIPROC_DIR`) at a fresh directory: each process writes its values to files
  there and a scrape of any process reads them all. Gauges of processes that died are dropped at
  the next scrape.
- `ServiceCollector`: runs by status (one GROUP BY on the database) and queue depth (Redis list
  lengths of the Celery queues and of the inference request channel), computed when scraped and
  kept `CACHE_SECONDS`, so neither the database nor the broker is asked more often however many
  scrapers there are. They are the same for every process of a deployment: dashboards take
  `max` over instances. With the embedded broker there is no queue depth (omitted).

prometheus_client is imported inside the functions here: it chooses between single- and
multiprocess mode once, when first imported, so the commands call `multiprocess_dir()` before
anything imports it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from infra import requests
from infra.jobs import Queue
from infra.runs.lifecycle import RunStatus
from infra.runs.repository import ExecutionRepository
from infra.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CACHE_SECONDS = 5.0
# A scrape must not hang on an unreachable broker: it reports the broker down instead.
BROKER_TIMEOUT_SECONDS = 2.0


@contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """Run the block (and the processes it starts) in multiprocess mode. A directory given in
    PROMETHEUS_MULTIPROC_DIR is used after its metric files are removed (values of an earlier
    start would be added to this one's); otherwise a fresh one is made and removed afterwards."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="mbpo-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


class _ProcessMetrics:
    """The metrics defined in this process (prometheus_client's default registry), or in
    multiprocess mode those of every process of the group."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = os.environ.get(MULTIPROC_ENV)
        self.source: Any = REGISTRY if self.path is None else MultiProcessCollector(None, self.path)

    def collect(self) -> Iterable[Any]:
        if self.path is not None:
            _forget_dead_processes(self.path)
        return self.source.collect()


def _forget_dead_processes(path: str) -> None:
    """Remove the live gauges (in-flight requests, device memory) of processes that exited; their
    counters and histograms stay, as they count what happened."""
    from prometheus_client.multiprocess import mark_process_dead

    pids = {int(f.stem.rsplit("_", 1)[1]) for f in Path(path).glob("gauge_live*_*.db")}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)
        except PermissionError:
            pass  # alive, someone else's


def scrape_registry(*collectors: Any) -> Any:
    """The registry a metrics endpoint renders: this process group's metrics plus `collectors`
    (objects with a `collect()`, called at every scrape)."""
    from prometheus_client import CollectorRegistry, disable_created_metrics

    disable_created_metrics()  # no `_created` twin of every counter: half the series, no use here
    registry = CollectorRegistry()
    for collector in (_ProcessMetrics(), *collectors):
        registry.register(collector)
    return registry


def render(registry: Any) -> tuple[bytes, str]:
    """(body, content type) of a scrape in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    # The text format every Prometheus version reads (0.0.4), as start_http_server answers too.
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


class ServiceCollector:
    """Runs by status and queue depth, read at most every `cache_seconds` (see the module)."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], cache_seconds: float = CACHE_SECONDS
    ):
        self.settings = settings
        self.session_factory = session_factory
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._runs: dict[str, int] | None = None
        self._queues: dict[str, int] | None = None
        self._broker_up: bool | None = None
        self._redis: Any = None

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._runs = self._read_runs()
                self._queues, self._broker_up = self._read_queues()
                self._read_at = time.monotonic()
            runs, queues, broker_up = self._runs, self._queues, self._broker_up
        up = GaugeMetricFamily(
            "mbpo_metrics_source_up",
            "1 when the last read of a scrape-time source (database, broker) succeeded.",
            labels=["source"],
        )
        up.add_metric(["database"], float(runs is not None))
        if broker_up is not None:
            up.add_metric(["broker"], float(broker_up))
        yield up
        if runs is not None:
            family = GaugeMetricFamily("mbpo_runs", "Runs by status, from the database.", labels=["status"])
            for status in RunStatus:
                family.add_metric([status.value], runs.get(status.value, 0))
            yield family
        if queues is not None:
            family = GaugeMetricFamily(
                "mbpo_queue_depth",
                "Jobs waiting in each queue (Redis list lengths; inference: the request channel).",
                labels=["queue"],
            )
            for name, depth in queues.items():
                family.add_metric([name], depth)
            yield family

    def _read_runs(self) -> dict[str, int] | None:
        try:
            with self.session_factory() as session:
                return ExecutionRepository(session).runs_by_status()
        except Exception as exc:
            log.warning("metrics: cannot count runs: %s", exc)
            return None

    def _read_queues(self) -> tuple[dict[str, int] | None, bool | None]:
        """Queue depths and whether the broker answered; (None, None) without a Redis broker."""
        url = self.settings.celery_broker_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return None, None
        prefix = self.settings.broker_key_prefix
        # Celery's Redis transport keeps a queue's messages in a list named after the queue (behind
        # broker_key_prefix); no task is routed to `inference`, whose work waits in the request list.
        keys = {q.value: [f"{prefix}{q.value}"] for q in Queue}
        keys[Queue.inference.value].append(requests._list_key(self.settings))
        try:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(
                    url, socket_timeout=BROKER_TIMEOUT_SECONDS, socket_connect_timeout=BROKER_TIMEOUT_SECONDS
                )
            pipe = self._redis.pipeline(transaction=False)
            for names in keys.values():
                for key in names:
                    pipe.llen(key)
            lengths = iter(pipe.execute())
        except Exception as exc:
            log.warning("metrics: cannot read queue depths: %s", exc)
            return None, False
        return {queue: sum(next(lengths) for _ in names) for queue, names in keys.items()}, True
