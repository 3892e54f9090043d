"""The worker's Celery application: the shared configuration of api.jobs plus the task modules.

Built by `create_worker_app()` (called by `mbpo worker`), never at import time."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from api.db.session import make_engine, make_session_factory
from api.jobs import TaskName, create_celery
from api.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A dataset `validating` this long without a live lease lost its message; re-send it on startup.
STALE_AFTER = timedelta(seconds=30)


def create_worker_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = create_celery(settings)
    import worker.tasks  # noqa: F401  (registers the shared tasks on this app)

    return app


def worker_identity(task_id: str | None) -> str:
    """A lease owner name unique to this task execution."""
    return f"{socket.gethostname()}:{os.getpid()}:{task_id or '-'}"


@worker_ready.connect
def _resend_stale_jobs(sender: Any = None, **_: Any) -> None:
    from worker.datasets import stale_validations

    settings = get_settings()
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
