"""The job contract between the API and the workers: task names, queues, one routing table, the
Celery configuration, and the job queue of a request (its jobs go through the outbox, infra.outbox).

Both sides import this module (it has no fastapi import); the worker registers implementations
under these names, the API only sends by name, so it never imports worker code (or torch).
Messages carry ids only: the database row is the job's state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue
from sqlalchemy.orm import Session

from infra import outbox
from infra.settings import Settings

log = logging.getLogger(__name__)


class Queue(StrEnum):
    """Queues by workload: a machine's workers consume the ones its hardware suits."""

    cpu = "cpu"  # validation, thumbnails, bookkeeping
    gpu = "gpu"  # scoring, mining, training, evaluation (a whole run)
    # Chat completions and spot-checks. No task is routed here: a worker consuming this queue serves
    # the inference request channel (infra.requests) instead of a Celery task per request.
    inference = "inference"


class TaskName(StrEnum):
    validate_dataset = "mbpo.datasets.validate"
    execute_run = "mbpo.runs.execute"


# The one routing table. A task not listed here is a bug, not a default-queue surprise.
TASK_ROUTES: dict[TaskName, Queue] = {
    TaskName.validate_dataset: Queue.cpu,
    TaskName.execute_run: Queue.gpu,
}


def celery_config(settings: Settings) -> dict[str, Any]:
    transport_options: dict[str, Any] = {}
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    if not settings.embedded:
        # Must exceed the longest job: after it an unacked message is redelivered (then the lease
        # makes the duplicate a no-op). Runs take hours.
        transport_options["visibility_timeout"] = 12 * 3600
    return {
        "broker_url": settings.celery_broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in the database rows
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": [
            KombuQueue(q.value, Exchange(q.value, type="direct"), routing_key=q.value) for q in Queue
        ],
        "task_default_queue": Queue.cpu.value,
        "task_routes": {name.value: {"queue": queue.value} for name, queue in TASK_ROUTES.items()},
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


# The embedded broker is polled (kombu's default: every second); a chat request waits on it.
EMBEDDED_POLLING_INTERVAL = 0.05


def create_celery(settings: Settings) -> Celery:
    app = Celery("mbpo")
    app.conf.update(celery_config(settings))
    if settings.celery_broker_url.startswith("sqla+"):
        # Not through broker_transport_options: kombu's SQLAlchemy transport hands every transport
        # option to create_engine(), which rejects `polling_interval` and kills the worker.
        from kombu.transport import sqlalchemy as kombu_sqla

        kombu_sqla.Transport.polling_interval = EMBEDDED_POLLING_INTERVAL
    return app


_clients: dict[str, Celery] = {}
_clients_lock = threading.Lock()


def get_celery(settings: Settings) -> Celery:
    """The process's Celery client for `settings` (built on first use, then reused)."""
    key = f"{settings.celery_broker_url}|{settings.broker_key_prefix}"
    with _clients_lock:
        if key not in _clients:
            _clients[key] = create_celery(settings)
        return _clients[key]


def sender(celery: Celery) -> outbox.SendJob:
    """Send a job (task name, args) through `celery`: what the outbox calls."""

    def send(name: str, args: list[str]) -> None:
        celery.send_task(name, args=args)

    return send


@dataclass
class JobQueue:
    """Jobs a request wants to start, written to the outbox in the request's transaction (`bind`
    the session first) and sent only after it committed (`send`).

    Sending before the commit would let a fast worker look for a row that does not exist yet (or
    never will, if the commit fails); sending only from memory after the commit would lose the job
    if the broker is down then. A job the broker refused stays in the outbox for the relay."""

    session: Session | None = None
    outbox_ids: list[int] = field(default_factory=list)
    rollback_hooks: list[Callable[[], None]] = field(default_factory=list)
    commit_hooks: list[Callable[[], None]] = field(default_factory=list)

    def bind(self, session: Session) -> None:
        """The session whose transaction the jobs are written in."""
        self.session = session

    @property
    def pending(self) -> bool:
        """Whether anything waits for the commit (jobs to send or hooks to run)."""
        return bool(self.outbox_ids or self.commit_hooks)

    def enqueue(self, name: TaskName, *ids: str) -> None:
        if self.session is None:
            raise RuntimeError("JobQueue.enqueue needs the request's session (JobQueue.bind)")
        self.outbox_ids.append(outbox.add(self.session, name.value, ids))

    def on_rollback(self, hook: Callable[[], None]) -> None:
        """Undo a side effect outside the database (files written) if the transaction fails."""
        self.rollback_hooks.append(hook)

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` once the transaction committed (e.g. publish the run events it wrote)."""
        self.commit_hooks.append(hook)

    def discard(self) -> None:
        """The transaction failed: its outbox rows are gone with it; undo the side effects."""
        self.outbox_ids.clear()
        self.commit_hooks.clear()
        hooks, self.rollback_hooks = self.rollback_hooks, []
        for hook in reversed(hooks):
            try:
                hook()
            except Exception:
                log.exception("rollback hook failed")

    def send(self, celery: Celery) -> None:
        """After the commit: send the jobs and delete their outbox rows (a new short transaction of
        the bound session, committed or closed), then run the after-commit hooks. Never raises: a
        job that could not be sent stays in the outbox and the relay sends it once the broker (or
        the database) answers."""
        self.rollback_hooks.clear()
        ids, self.outbox_ids = self.outbox_ids, []
        try:
            if ids:
                assert self.session is not None  # enqueue needed it
                result = outbox.send_jobs(self.session, sender(celery), ids)
                if result.failed:
                    log.warning("broker unreachable (%s); the relay will send the job(s)", result.error)
        except Exception:
            log.exception("could not send jobs after the commit; the relay will send them later")
        hooks, self.commit_hooks = self.commit_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.exception("after-commit hook failed")
