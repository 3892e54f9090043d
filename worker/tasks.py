"""Celery tasks: thin shells that load settings and a session factory and call plain functions."""

from __future__ import annotations

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from api.db.session import get_session_factory
from api.jobs import TaskName
from api.settings import get_settings
from worker.celery_app import worker_identity
from worker.datasets import run_dataset_validation

# Only these are worth retrying: the database was unreachable for a moment.
TRANSIENT_ERRORS = (OperationalError,)


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


# The inference tasks live with their plain functions; importing registers them on the app.
import worker.inference  # noqa: E402

# Runs: the task lives with its plain functions; the sweeper starts with the worker.
import worker.runs  # noqa: E402
import worker.sweeper  # noqa: E402, F401
