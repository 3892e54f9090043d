"""Readiness checks: can this process reach its database and its broker, and is there room left
on the disk of MBPO_HOME?"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from infra.jobs import get_celery
from infra.settings import Settings


def check_database(factory: sessionmaker[Session]) -> str | None:
    """None when reachable, else the reason."""
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_broker(settings: Settings) -> str | None:
    try:
        with get_celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def check_disk(settings: Settings) -> str | None:
    """None when the file system of MBPO_HOME has at least MBPO_MIN_FREE_DISK_BYTES free (a home
    not created yet is measured on its nearest existing parent), else the reason."""
    if settings.min_free_disk_bytes == 0:
        return None
    path: Path = settings.home_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if free < settings.min_free_disk_bytes:
        return (
            f"{_gib(free)} free for MBPO_HOME, below MBPO_MIN_FREE_DISK_BYTES "
            f"({_gib(settings.min_free_disk_bytes)}): runs cannot write checkpoints"
        )
    return None
