"""The worker's Prometheus metrics and the HTTP endpoint serving them (`MBPO_WORKER_METRICS_PORT`;
0, the default, serves none).

Written by the process that executes a run (a prefork pool child), from what the run reports
anyway (`RunExport`, fed by worker.runs.RunRecorder): training step time (a histogram), tokens
trained on (a counter: tokens/s is its rate), the attack success rate of the last mining stage,
and the CUDA memory the process holds, when it uses CUDA. `mbpo worker` runs in prometheus_client's
multiprocess mode (infra.metrics.multiprocess_dir), so the worker's main process, which serves the
endpoint, reports its pool children's values.

Read at scrape time: runs by status and queue depths (infra.metrics.ServiceCollector) and the
resident memory of the worker's processes (main and pool children).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from infra.db.session import make_engine, make_session_factory
from infra.metrics import ServiceCollector, scrape_registry
from infra.settings import Settings
from mbpo_core.pipeline.stages import StageProgress

log = logging.getLogger(__name__)

STEP_SECONDS = Histogram(
    "mbpo_train_step_seconds",
    "Wall time of one training step, as the worker sees it (recording included).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
TRAIN_TOKENS = Counter(
    "mbpo_train_tokens", "Tokens (prompts and completions) processed by training; rate() is tokens/s."
)
ATTACK_SUCCESS = Gauge(
    "mbpo_mining_attack_success_rate",
    "Attack success rate of the last mining stage this worker completed.",
    multiprocess_mode="mostrecent",
)
DEVICE_MEMORY = Gauge(
    "mbpo_worker_device_memory_bytes",
    "CUDA memory held by the worker's run processes (torch allocated / reserved), per device.",
    ["device", "kind"],
    multiprocess_mode="livesum",
)
# The trainer's running total of tokens (TRL's num_input_tokens_seen, mbpo_core.training.progress).
TOKENS_METRIC = "num_tokens"


@dataclass
class RunExport:
    """What one run execution exports. Step time and tokens are differences between consecutive
    training steps reported by this process (the first step after a start only sets the mark)."""

    _last_step: tuple[int, float, float | None] | None = None  # step, monotonic time, tokens so far

    def progress(self, p: StageProgress) -> None:
        if p.step is not None:
            self._step(p.step, p.metrics.get(TOKENS_METRIC))
        _device_memory()

    def _step(self, step: int, tokens: float | None) -> None:
        now = time.monotonic()
        last, self._last_step = self._last_step, (step, now, tokens)
        if last is None or step <= last[0]:
            return
        STEP_SECONDS.observe((now - last[1]) / (step - last[0]))
        if tokens is not None and last[2] is not None and tokens > last[2]:
            TRAIN_TOKENS.inc(tokens - last[2])

    def stage_completed(self, stage: str, result: dict[str, Any]) -> None:
        rate = result.get("attack_success_rate")
        if stage == "mining" and isinstance(rate, int | float) and math.isfinite(rate):
            ATTACK_SUCCESS.set(rate)


def _device_memory() -> None:
    """CUDA memory of this process, if it uses CUDA (torch is never imported, nor CUDA started, here)."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        DEVICE_MEMORY.labels(device, "allocated").set(torch.cuda.memory_allocated(index))
        DEVICE_MEMORY.labels(device, "reserved").set(torch.cuda.memory_reserved(index))


class WorkerMemory:
    """Resident memory of this worker: its main process and every child (the pool), at scrape time."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        total = 0
        for proc in (self.process, *self.process.children(recursive=True)):
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue  # exited meanwhile
        yield GaugeMetricFamily(
            "mbpo_worker_memory_rss_bytes", "Resident memory of the worker's processes together.", total
        )


def serve_metrics(settings: Settings) -> Any:
    """Start the metrics endpoint on `worker_metrics_port` (all interfaces) in a daemon thread;
    returns the server, or None when the port is 0 or taken (logged: the worker runs on)."""
    if not settings.worker_metrics_port:
        return None
    # A private, small engine: the scrape's one short query at a time.
    engine = make_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=1)
    registry = scrape_registry(ServiceCollector(settings, make_session_factory(engine)), WorkerMemory())
    try:
        server, _ = start_http_server(settings.worker_metrics_port, registry=registry)
    except OSError as exc:
        log.warning(
            "metrics: cannot listen on port %d (%s); this worker serves no metrics",
            settings.worker_metrics_port,
            exc,
        )
        engine.dispose()
        return None
    log.info("metrics on port %d", settings.worker_metrics_port)
    return server
