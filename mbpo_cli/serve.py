"""`mbpo serve` (the service with its local workers) and `mbpo api` (the web app alone).

Heavy imports happen inside the commands."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from mbpo_cli.keys import create_key

DEV_ADMIN_USER = "admin"
DEV_KEY_FILE = "admin_key"


def _dev_admin_key(home: Path) -> tuple[str, bool]:
    """The development admin key kept in MBPO_HOME, created on first start. (key, created)."""
    from api.auth.service import authenticate
    from infra.db.session import get_session_factory
    from infra.settings import get_settings

    path = home / DEV_KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
        with get_session_factory(get_settings().sqlalchemy_url).begin() as session:
            if authenticate(session, key) is not None:
                return key, False
    key = create_key(DEV_ADMIN_USER, "development admin key", True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, True


@dataclass(frozen=True)
class WorkerSpec:
    """One local worker of `mbpo serve`; its Celery node name is `<name>@<host>`."""

    name: str
    queues: str
    pool: str
    concurrency: int


# Runs in one worker, inference and dataset validation in the other, so a chat request or a
# spot-check never waits behind a run stage. The run worker keeps the prefork pool: a run executes
# in its pool child, and a warm shutdown hands it back (worker.shutdown). The other one serves
# inference requests from threads sharing one model cache, as production workers do.
LOCAL_WORKERS = (
    WorkerSpec("gpu", "gpu", "prefork", 1),
    WorkerSpec("inference", "inference,cpu", "threads", 8),
)


def _start_worker(spec: WorkerSpec) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "mbpo_cli.main",
        "worker",
        "--queues",
        spec.queues,
        "--pool",
        spec.pool,
        "--concurrency",
        str(spec.concurrency),
        "--hostname",
        f"{spec.name}@%h",
    ]
    # Its own session: a Ctrl-C in the terminal reaches `mbpo serve` only, which then stops the
    # worker in order; and the worker's pool children share its process group, so none outlives it.
    return subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)


# How long a stopping worker may take to bring its run to a safe point (a checkpoint) and hand it
# back; a training step or a mining batch of the testbed takes seconds.
WORKER_STOP_GRACE_SECONDS = 60.0


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every worker at once (a warm shutdown: a run is handed back, worker.shutdown), then,
    once each exited or after the grace period, SIGKILL to whatever is left of its process group."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_GRACE_SECONDS
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class LocalWorkers:
    """The workers `mbpo serve` runs (LOCAL_WORKERS), each restarted if it dies (a crash must not
    silently leave every job queued forever); stopped with the server."""

    def __init__(self, specs: tuple[WorkerSpec, ...] = LOCAL_WORKERS) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a restart and the stop never cross
        self._procs = {spec.name: _start_worker(spec) for spec in specs}
        self._watchers = [
            threading.Thread(target=self._watch, args=(spec,), name=f"local-{spec.name}-watch", daemon=True)
            for spec in specs
        ]
        for watcher in self._watchers:
            watcher.start()

    def _watch(self, spec: WorkerSpec) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            code = self._procs[spec.name].wait()
            if self._stopping.is_set():
                return
            typer.echo(f"local {spec.name} worker exited with {code}; restarting in {delay:.0f}s", err=True)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 60.0)
            with self._lock:
                if self._stopping.is_set():
                    return
                self._procs[spec.name] = _start_worker(spec)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            procs = list(self._procs.values())
        _stop(procs)
        for watcher in self._watchers:
            watcher.join(timeout=5)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _register_demo(testbed: Path, host: str, port: int) -> None:
    from api.demo import register_demo
    from infra.db.session import get_session_factory
    from infra.settings import get_settings

    settings = get_settings()
    with get_session_factory(settings.sqlalchemy_url)() as session:
        demo = register_demo(session, settings, DEV_ADMIN_USER, testbed)
    key_file = settings.home_dir / DEV_KEY_FILE
    typer.echo(
        f"Demo: testbed model {demo.model_id} and {len(demo.dataset_ids)} datasets registered. "
        "Launch a run:\n\n"
        f'    curl -s -X POST http://{host}:{port}/v1/runs -H "Authorization: Bearer $(cat {key_file})" '
        f"-H 'Content-Type: application/json' -d @{demo.run_file}\n"
    )


# How long the API keeps an idle HTTP connection open: longer than clients and load balancers keep
# one before they stop reusing it (httpx 5 s, AWS ALB 60 s). With uvicorn's default of 5 s, a client
# that reuses a connection just as the server closes it gets a reset instead of an answer (seen with
# 500 concurrent requests through one httpx client's pool: a few in 2,000), which a load balancer
# turns into a 502.
KEEP_ALIVE_SECONDS = 75


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[
        bool, typer.Option(help="Also start the local workers: one for runs, one for inference and datasets.")
    ] = True,
    demo: Annotated[
        Path | None,
        typer.Option(help="A built testbed to register for the development admin (`make run` passes it)."),
    ] = None,
) -> None:
    """Run the service: migrate, print the admin key, start the local workers and the API.

    Without DATABASE_URL and BROKER_URL everything lives in MBPO_HOME (SQLite database, SQLite
    broker): no servers needed. With them set, the same code uses PostgreSQL and Redis."""
    import uvicorn

    from api.app import create_app
    from infra.db.migrate import upgrade_to_head
    from infra.settings import get_settings

    settings = get_settings()
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.sqlalchemy_url)
    mode = "embedded (SQLite + local broker)" if settings.embedded else "PostgreSQL + broker"
    typer.echo(f"MBPO service: {mode}; data in {home}")
    if settings.env != "production":
        key, created = _dev_admin_key(home)
        state = "created" if created else "kept"
        typer.echo(f"Development admin key ({state} in {home / DEV_KEY_FILE}):\n\n    {key}\n")
        if demo is not None:
            _register_demo(demo, host, port)
    typer.echo(f"API: http://{host}:{port}  (OpenAPI: http://{host}:{port}/docs)", err=False)
    local_workers = LocalWorkers() if worker else None
    # uvicorn stops gracefully on SIGTERM, then raises the signal again; without a handler of ours
    # that would kill this process before the `finally` stops the workers (orphans).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            log_level=settings.log_level.lower(),
        )
    finally:
        if local_workers is not None:
            local_workers.stop()


def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    keep_alive: Annotated[
        int,
        typer.Option(
            help="Seconds an idle HTTP connection is kept open; keep it above the idle timeout of the "
            "clients and load balancers in front."
        ),
    ] = KEEP_ALIVE_SECONDS,
) -> None:
    """Run only the API (production: migrations and workers are separate processes)."""
    import uvicorn

    from infra.metrics import multiprocess_dir
    from infra.settings import get_settings

    # Several processes answer /metrics in turn: each must report all of them.
    with multiprocess_dir() if workers > 1 else contextlib.nullcontext():
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=True,
            timeout_keep_alive=keep_alive,
            log_level=get_settings().log_level.lower(),
        )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("api")(api)
