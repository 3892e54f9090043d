"""Worker test fixtures: settings over the committed database (tests/conftest.py) that a worker
process reads, a per-module Redis key prefix, and a real `mbpo worker` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from tests.helpers import services


@pytest.fixture(scope="module")
def e2e_settings(committed_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    services.require_redis()
    base = tmp_path_factory.mktemp("e2e")
    (base / "roots").mkdir()
    prefix = services.broker_prefix()
    yield Settings(
        env="test",
        home=base / "home",
        database_url=committed_db,
        broker_url=services.REDIS_URL,
        broker_key_prefix=prefix,
        data_roots=[base / "roots"],
        max_image_pixels=100_000,
    )
    services.delete_redis_prefix(prefix)


def settings_env(settings: Settings) -> dict[str, str]:
    return services.service_env(
        DATABASE_URL=settings.sqlalchemy_url,
        BROKER_URL=settings.celery_broker_url,
        MBPO_BROKER_KEY_PREFIX=settings.broker_key_prefix,
        MBPO_HOME=str(settings.home_dir),
        MBPO_DATA_ROOTS=":".join(str(p) for p in settings.data_roots),
        MBPO_MAX_IMAGE_PIXELS=str(settings.max_image_pixels),
        MBPO_ENV="test",
    )


@pytest.fixture(scope="module")
def celery_worker(e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real worker process consuming the cpu queue; yields its log file."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = services.start_mbpo(
        ["worker", "--queues", "cpu", "--concurrency", "1"], settings_env(e2e_settings), log
    )
    try:
        services.wait_for(
            lambda: proc.poll() is not None or "ready." in log.read_text(errors="replace"),
            timeout=60,
            what="celery worker to start",
        )
        assert proc.poll() is None, log.read_text()
        yield log
    finally:
        services.stop_process_group(proc)
