"""The worker's Celery application: `infra.jobs`' shared configuration plus the tasks of
`worker.tasks`, what starts with a worker process (the run sweeper, the re-sending of dataset
validations that lost their message, and in a worker that consumes the `inference` queue the
consumer of inference requests, worker.inference) and what a graceful stop does (worker.shutdown).
Every worker also runs the outbox relay (infra.outbox), which sends the jobs the API could not,
and, given MBPO_WORKER_METRICS_PORT, serves its Prometheus metrics (worker.metrics).

Built by `create_worker_app()` (called by `mbpo worker`), never at import time.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

import worker.tasks  # noqa: F401  (registers the shared tasks on every app built here)
from infra.db.session import make_engine, make_session_factory
from infra.jobs import Queue, TaskName, create_celery
from infra.outbox import Relay
from infra.settings import Settings, get_settings
from worker.datasets import stale_validations
from worker.inference import InferenceConsumer
from worker.metrics import serve_metrics
from worker.shutdown import clear_stop, request_stop
from worker.sweeper import Sweeper

log = logging.getLogger(__name__)

# A dataset `validating` this long without a live lease lost its message; re-send it on startup.
STALE_AFTER = timedelta(seconds=30)


def create_worker_app(settings: Settings | None = None) -> Celery:
    return create_celery(settings or get_settings())


@worker_ready.connect
def _resend_stale_jobs(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    clear_stop(settings)
    engine = make_engine(settings.sqlalchemy_url)  # a private engine: never shared with forked children
    try:
        with make_session_factory(engine)() as session:
            stale = stale_validations(session, older_than=STALE_AFTER)
        app = sender.app if sender is not None else create_worker_app(settings)
        for dataset_id in stale:
            app.send_task(TaskName.validate_dataset.value, args=[dataset_id])
        if stale:
            log.info("re-sent validation of %d stale dataset(s)", len(stale))
    except Exception:
        log.exception("startup sweep failed")
    finally:
        engine.dispose()


_sweeper: Sweeper | None = None


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    global _sweeper
    if sender is None or _sweeper is not None:
        return
    app = sender.app

    def send(run_id: str) -> None:
        app.send_task(TaskName.execute_run.value, args=[run_id])

    _sweeper = Sweeper(get_settings(), send)
    _sweeper.start()


_relay: Relay | None = None


@worker_ready.connect
def _start_relay(sender: Any = None, **_: Any) -> None:
    global _relay
    if sender is None or _relay is not None:
        return
    app = sender.app

    def send(name: str, args: list[str]) -> None:
        app.send_task(name, args=args)

    _relay = Relay(get_settings(), send)
    _relay.start()


_metrics_server: Any = None


@worker_ready.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    global _metrics_server
    if sender is None or _metrics_server is not None:
        return
    _metrics_server = serve_metrics(get_settings())


_inference: InferenceConsumer | None = None
# How long a stopping worker lets the inference requests it holds finish (a requester is waiting).
INFERENCE_STOP_GRACE_SECONDS = 30.0


@worker_ready.connect
def _start_inference_consumer(sender: Any = None, **_: Any) -> None:
    global _inference
    if sender is None or _inference is not None:
        return
    if Queue.inference.value not in sender.app.amqp.queues.consume_from:
        return
    _inference = InferenceConsumer(get_settings(), concurrency=int(sender.controller.concurrency or 1))
    _inference.start()


@worker_shutting_down.connect
def _hand_runs_back(**_: Any) -> None:
    # Warm shutdown began: the running run stops at its next safe point and is handed back.
    request_stop(get_settings())


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop.set()
    if _relay is not None:
        _relay.stop.set()


@worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    if _metrics_server is not None:
        _metrics_server.shutdown()


@worker_shutdown.connect
def _stop_inference_consumer(**_: Any) -> None:
    if _inference is not None and not _inference.stop(INFERENCE_STOP_GRACE_SECONDS):
        log.warning("stopped with inference requests still in progress")
