"""Real PostgreSQL and Redis for tests: a fresh migrated database per test session, unique broker
key prefixes, worker and server subprocesses.

Tests that need a service skip when it does not answer, unless MBPO_TEST_REQUIRE_SERVICES=1
(CI), in which case they fail: a CI run must never pass by skipping.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest

PG_ADMIN_URL = os.environ.get("MBPO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MBPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def services_required() -> bool:
    return os.environ.get("MBPO_TEST_REQUIRE_SERVICES") == "1"


def _unavailable(what: str, why: str) -> None:
    message = f"{what} not reachable ({why})"
    if services_required():
        pytest.fail(message + " and MBPO_TEST_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def require_postgres() -> None:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except Exception as exc:
        _unavailable("PostgreSQL", str(exc).strip())


def require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        _unavailable("Redis", str(exc).strip())


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database with the real migrations applied; dropped afterwards."""
    import psycopg

    from infra.db.migrate import upgrade_to_head

    require_postgres()
    name = f"mbpo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    sa_url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        upgrade_to_head(sa_url)
        yield sa_url
    finally:
        from infra.db.session import get_engine

        get_engine.cache_clear()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def broker_prefix() -> str:
    return f"mbpo_test_{uuid.uuid4().hex[:10]}:"


def delete_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


def service_env(**overrides: str) -> dict[str, str]:
    """The current environment without any MBPO/database/broker settings, plus `overrides`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MBPO_") and k not in {"DATABASE_URL", "BROKER_URL"}
    }
    env.update(overrides)
    return env


def start_mbpo(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[Any]:
    """`mbpo ARGS` as a subprocess in its own process group, output to `log_path`."""
    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "mbpo_cli.main", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM the group (the process and its children), then SIGKILL what is left."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def local_workers_ready(log: Path) -> bool:
    """Whether each local worker of `mbpo serve` (one for runs, one for inference and datasets) has
    logged `<name>@<host> ready.` in the server's log."""
    from mbpo_cli.serve import LOCAL_WORKERS

    text = log.read_text(errors="replace")
    return all(re.search(rf"\b{spec.name}@\S+ ready\.", text) for spec in LOCAL_WORKERS)


@contextmanager
def embedded_serve(
    args: list[str], env: dict[str, str], log: Path, *, timeout: float = 120
) -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """`mbpo serve --port <free> ARGS` until its API answers and its local workers are ready; yields
    (base URL, process) and stops the whole process group afterwards."""
    import httpx

    port = free_port()
    proc = start_mbpo(["serve", "--port", str(port), *args], env, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=timeout, interval=0.5, what="mbpo serve")
        wait_for(lambda: local_workers_ready(log), timeout=timeout, what="local workers")
        yield url, proc
    finally:
        stop_process_group(proc)
