"""`mbpo worker`: start one Celery worker."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: cpu, gpu, inference.")
    ] = "cpu,gpu,inference",
    concurrency: Annotated[
        int, typer.Option(help="Tasks run at once (gpu workers: 1; every task uses the first visible GPU).")
    ] = 1,
    pool: Annotated[
        str, typer.Option(help="Celery pool: prefork (isolation), solo (one process) or threads (inference).")
    ] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Worker node name (default: celery's).")] = None,
) -> None:
    """Consume jobs from the broker (BROKER_URL, or the embedded broker in MBPO_HOME)."""
    from infra.jobs import Queue
    from infra.metrics import multiprocess_dir
    from infra.settings import get_settings

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(names) - {q.value for q in Queue})
    if unknown:
        raise typer.BadParameter(f"unknown queue(s): {', '.join(unknown)}", param_hint="--queues")
    argv = [
        "worker",
        "-Q",
        ",".join(names),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-l",
        loglevel,
        "--without-gossip",
    ]
    argv += ["--without-mingle", "--without-heartbeat"]
    if hostname:
        argv += ["-n", hostname]
    # A run executes in a pool child and the metrics port is served by this process: they share
    # their metrics through files (prometheus_client's multiprocess mode), chosen before the worker
    # modules import prometheus_client.
    with multiprocess_dir() if get_settings().worker_metrics_port else contextlib.nullcontext():
        from worker.app import create_worker_app

        create_worker_app().worker_main(argv)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
