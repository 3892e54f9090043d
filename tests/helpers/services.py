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


# ---- private servers that a test may stop (outages) ------------------------------------------
# The shared PostgreSQL and Redis above must never be stopped by a test; these run on free ports
# of their own, in a directory of the test, as long as the fixture that started them.

PG_BIN = Path(os.environ.get("MBPO_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _run_quietly(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


class PrivateRedis:
    """A `redis-server` of its own (no persistence) on a free port; `stop()` and `start()` again on
    the same port simulate a broker outage."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=2)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.workdir)],
            stdout=(self.workdir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            try:
                return bool(self.client().ping())
            except Exception:
                return False

        wait_for(up, timeout=30, interval=0.1, what="private redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@contextmanager
def private_redis(workdir: Path) -> Iterator[PrivateRedis]:
    """A started PrivateRedis; skipped (failed under MBPO_TEST_REQUIRE_SERVICES=1) without
    `redis-server`."""
    import shutil

    if shutil.which("redis-server") is None:
        _unavailable("redis-server (for a private Redis)", "not installed")
    server = PrivateRedis(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class PrivatePostgres:
    """A PostgreSQL cluster of its own (`initdb`, `pg_ctl`) on a free port, trust authentication,
    user `postgres`; `stop()` and `start()` again simulate a database outage. As root (this
    machine, CI containers) the server runs as the `postgres` system user, since PostgreSQL refuses
    root; `workdir` must then be reachable by that user (private_postgres uses one under /tmp)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.data = workdir / "data"

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def init(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.workdir, "postgres", "postgres")
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N"]
        _run_quietly(self._as_server_user([*initdb, "--no-instructions"]), "initdb")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.workdir / "postgres.log"
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"]
        _run_quietly(self._as_server_user(pg_ctl), "pg_ctl start")

    def stop(self) -> None:
        """A fast shutdown: every connection is dropped, as in a restart or failover."""
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        _run_quietly(self._as_server_user(pg_ctl), "pg_ctl stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PrivatePostgres with a migrated database `mbpo` (url: `.url("mbpo")`), in a
    directory of its own under the system's temporary directory, removed afterwards; skipped
    (failed under MBPO_TEST_REQUIRE_SERVICES=1) without the PostgreSQL server binaries."""
    import shutil
    import tempfile

    import psycopg

    from infra.db.migrate import upgrade_to_head

    if not (PG_BIN / "initdb").exists():
        _unavailable("PostgreSQL server binaries (for a private cluster)", f"no {PG_BIN / 'initdb'}")
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="mbpo-test-pg-")))
    try:
        server.init()
        server.start()
        admin = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "mbpo"')
        upgrade_to_head(server.url("mbpo"))
        yield server
    finally:
        from infra.db.session import get_engine

        get_engine.cache_clear()
        if server.running:
            server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
