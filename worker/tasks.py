"""The Celery tasks: one thin shell per task name of `infra.jobs.TaskName`.

A shell loads the settings (and a session factory where the job has a row), names the lease owner
and calls a plain function that tests call without Celery. Imports go one way:
`worker.app` -> this module -> the plain functions (`worker.datasets`, `worker.runs`); none of
those imports Celery's app or this module. Inference requests are no Celery tasks: they come
through `infra.requests` (worker.inference).
"""

from __future__ import annotations

import os
import socket

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from infra.db.session import get_session_factory
from infra.jobs import TaskName
from infra.settings import get_settings
from worker.datasets import run_dataset_validation
from worker.runs import execute_run

# Only these are worth retrying: the database was unreachable for a moment.
TRANSIENT_ERRORS = (OperationalError,)


def worker_identity(task_id: str | None) -> str:
    """A lease owner name unique to this task execution."""
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


@shared_task(
    name=TaskName.validate_dataset.value,
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=8,
)
def validate_dataset(self: Task, dataset_id: str) -> str | None:
    settings = get_settings()
    factory = get_session_factory(settings.sqlalchemy_url)
    return run_dataset_validation(factory, settings, dataset_id, owner=worker_identity(self.request.id))


@shared_task(name=TaskName.execute_run.value, bind=True)
def execute_run_task(self: Task, run_id: str) -> str | None:
    """No automatic retries: a crash is recorded on the run; a dead worker's run is re-queued by
    the sweeper when its lease expires (up to max_attempts)."""
    settings = get_settings()
    factory = get_session_factory(settings.sqlalchemy_url)

    def requeue(rid: str) -> None:
        self.app.send_task(TaskName.execute_run.value, args=[rid])

    return execute_run(factory, settings, run_id, owner=worker_identity(self.request.id), requeue=requeue)
