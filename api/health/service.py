"""Readiness checks: can this process reach its database and its broker?"""

from __future__ import annotations

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
