"""Load benchmark of the read API on the production stack: uvicorn workers (`mbpo api`) against
PostgreSQL, driven by wrk.

Measures p50/p99 latency, requests/s, errors, the CPU per request of the server processes and of
the PostgreSQL backends serving them, and the database connections opened meanwhile, for
  GET /healthz                  (the baseline: the framework floor, no authentication, no database)
  GET /v1/datasets/{id}         (one dataset with its stats and validation report)
  GET /v1/datasets?limit=50     (a page of 50, newest first)
at 50 and 200 concurrent connections. Each route is also given as a ratio to the baseline measured
in the same run at the same concurrency (latency and CPU per request), and the load average of the
machine is printed before and after: on a shared machine, compare runs only through those.
Goal on a 2-core machine: zero errors and p99 < 100 ms for GET /v1/datasets/{id} at 50 clients.

    .venv/bin/python bench/api_load.py [--clients 50,200] [--duration 15] [--workers 2]

Creates a throwaway database (mbpo_bench_<random>) on --pg-admin-url, seeds it, and drops it.
Needs PostgreSQL, Redis (for /readyz only) and `wrk` (Debian package wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.auth.service import authenticate, create_api_key  # noqa: E402
from infra.db.base import utcnow  # noqa: E402
from infra.db.migrate import upgrade_to_head  # noqa: E402
from infra.db.models import Dataset, DatasetStatus  # noqa: E402
from infra.db.session import make_engine, make_session_factory  # noqa: E402


def seed(url: str, datasets: int) -> tuple[str, str]:
    """`datasets` ready datasets for the benchmark user (plus as many for another user, so the
    owner filter does real work); returns (api key, id of a dataset in the middle)."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    stats = {
        "tasks": {
            "yes_no": {"count": 600, "mean_question_chars": 24.1, "answers": {"yes": 300, "no": 300}},
            "multiple_choice": {
                "count": 250,
                "mean_question_chars": 31.0,
                "answers": {"A": 90, "B": 80, "C": 80},
            },
            "number": {"count": 150, "mean_question_chars": 27.5, "min": 0, "max": 9, "mean": 3.2},
        },
        "images": {"distinct": 1000, "min_width": 224, "max_width": 448, "formats": {"PNG": 1000}},
        "thumbnails": 1000,
    }
    report = {"lines": 1000, "valid_samples": 1000, "error_count": 0, "error_counts": {}, "errors": []}
    with factory.begin() as session:
        _, key = create_api_key(session, user_name="bench", key_name="bench", admin=False)
        _, other = create_api_key(session, user_name="other", key_name="other", admin=False)
    with factory() as session:
        users = {}
        users["bench"] = authenticate(session, key)
        users["other"] = authenticate(session, other)
        session.rollback()
    ids = []
    with factory.begin() as session:
        for i in range(datasets):
            for who in ("bench", "other"):
                principal = users[who]
                assert principal is not None
                row = Dataset(
                    owner_id=principal.user_id,
                    name=f"{who}-{i}",
                    source="path",
                    root_path=f"/srv/datasets/{who}-{i}",
                    manifest_name="manifest.jsonl",
                    status=DatasetStatus.ready,
                    num_samples=1000,
                    task_counts={"yes_no": 600, "multiple_choice": 250, "number": 150},
                    stats=stats,
                    report=report,
                    validated_at=utcnow(),
                )
                session.add(row)
                session.flush()
                if who == "bench":
                    ids.append(row.id)
    with engine.begin() as conn:
        # Planner statistics, as a live database has them (autovacuum would take a minute): without
        # them a page of 50 sorts all of the owner's rows.
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return key, ids[len(ids) // 2]


def parse_wrk(output: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", output, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(x) for x in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(m.group(1))
    return {
        "p50_ms": ms(latency["50"]),
        "p99_ms": ms(latency["99"]),
        "rps": rps,
        "requests": total,
        "errors": errors,
    }


def _cpu_seconds(select: Callable[[Path, list[str]], bool]) -> float:
    """User+system CPU of the processes `select(proc_dir, stat_fields)` picks."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if select(entry, fields):
                total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return total / tick


def group_cpu_seconds(pgid: int) -> float:
    """CPU of every process in the server's process group: a cost per request that, unlike
    latency, does not depend on what else the (shared) machine is doing."""
    return _cpu_seconds(lambda _, fields: int(fields[2]) == pgid)  # pgrp, counted after the name


def postgres_cpu_seconds(database: str) -> float:
    """CPU of the PostgreSQL backends connected to `database` (their process title names it). A
    backend that exits during a scenario takes its CPU with it: see `postgres_sessions`."""
    prefix = b"postgres: "
    marker = f" {database} ".encode()

    def serves(entry: Path, _: list[str]) -> bool:
        title = (entry / "cmdline").read_bytes()
        return title.startswith(prefix) and marker in title

    return _cpu_seconds(serves)


def postgres_sessions(admin_url: str, database: str) -> int:
    """Connections ever opened to `database`: a pool that keeps its connections opens none under load."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def run_wrk(url: str, key: str, clients: int, duration: int, threads: int) -> dict[str, float]:
    cmd = [
        "wrk",
        f"-t{min(threads, clients)}",
        f"-c{clients}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-H",
        f"Authorization: Bearer {key}",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


BASELINE = "GET /healthz"
GOAL = ("GET /v1/datasets/{id}", 50, 100.0)  # endpoint, clients, p99 ms


def report(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    """The table, each route as a ratio to the baseline at the same concurrency, and the goal."""
    baseline = {r["clients"]: r for r in results if r["endpoint"] == BASELINE}
    print(
        f"\n{os.cpu_count()} CPUs, uvicorn workers={args.workers}, wrk threads={args.wrk_threads}, "
        f"{args.duration}s per scenario; load average (1, 5, 15 min) before "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(
        "| endpoint | clients | p50 ms | p99 ms | req/s | errors | server CPU ms/req | "
        "postgres CPU ms/req | connections opened | p99 / baseline | server CPU / baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        floor = baseline.get(r["clients"])
        p99_ratio = f"{r['p99_ms'] / floor['p99_ms']:.1f}x" if floor else "-"
        cpu_ratio = (
            f"{r['server_cpu_ms_per_req'] / floor['server_cpu_ms_per_req']:.1f}x"
            if floor and floor["server_cpu_ms_per_req"] > 0
            else "-"
        )
        print(
            f"| `{r['endpoint']}` | {r['clients']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['rps']:.0f} | {r['errors']} | {r['server_cpu_ms_per_req']:.2f} | "
            f"{r['postgres_cpu_ms_per_req']:.2f} | {r['connections_opened']} | {p99_ratio} | {cpu_ratio} |"
        )
    endpoint, clients, limit = GOAL
    for r in results:
        if (r["endpoint"], r["clients"]) == (endpoint, clients):
            met = r["errors"] == 0 and r["p99_ms"] < limit
            print(
                f"\ngoal ({endpoint}, {clients} clients: no errors, p99 < {limit:.0f} ms): "
                f"{'met' if met else 'NOT met'} (p99 {r['p99_ms']:.1f} ms, {r['errors']} errors)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clients", default="50,200")
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--datasets", type=int, default=500, help="datasets per user to seed")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    if args.port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    name = f"mbpo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = "postgresql+psycopg://" + args.pg_admin_url.split("://", 1)[1].rsplit("/", 1)[0] + f"/{name}"
    server = None
    try:
        upgrade_to_head(url)
        key, dataset_id = seed(url, args.datasets)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "BROKER_URL": args.broker_url,
            "MBPO_LOG_LEVEL": "WARNING",
            "MBPO_ENV": "production",
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mbpo_cli.main",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(120):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            sys.exit("server did not become ready")
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{base}/v1/datasets/{dataset_id}", headers=headers).status_code == 200
        page = httpx.get(f"{base}/v1/datasets?limit=50", headers=headers).json()
        assert len(page["data"]) == 50 and page["next_cursor"]

        endpoints = {
            BASELINE: f"{base}/healthz",
            "GET /v1/datasets/{id}": f"{base}/v1/datasets/{dataset_id}",
            "GET /v1/datasets?limit=50": f"{base}/v1/datasets?limit=50",
        }
        # Warm-up at the highest concurrency measured: the pools of a running service hold their
        # connections, so opening them is not part of a steady-state figure.
        most = max(int(c) for c in args.clients.split(","))
        run_wrk(endpoints["GET /v1/datasets/{id}"], key, most, 3, args.wrk_threads)
        load_before = os.getloadavg()
        results = []
        for label, target in endpoints.items():
            for clients in (int(c) for c in args.clients.split(",")):
                cpu_before, pg_before = group_cpu_seconds(server.pid), postgres_cpu_seconds(name)
                sessions_before = postgres_sessions(args.pg_admin_url, name)
                r = run_wrk(target, key, clients, args.duration, args.wrk_threads)
                requests = max(r["requests"], 1)
                r["server_cpu_ms_per_req"] = 1000 * (group_cpu_seconds(server.pid) - cpu_before) / requests
                r["postgres_cpu_ms_per_req"] = 1000 * (postgres_cpu_seconds(name) - pg_before) / requests
                r["connections_opened"] = postgres_sessions(args.pg_admin_url, name) - sessions_before
                r["load_1min"] = os.getloadavg()[0]
                results.append({"endpoint": label, "clients": clients, **r})
                print(
                    f"{label:28s} c={clients:<4d} p50={r['p50_ms']:7.1f} ms  p99={r['p99_ms']:7.1f} ms  "
                    f"{r['rps']:8.1f} req/s  errors={r['errors']}  "
                    f"CPU/req server {r['server_cpu_ms_per_req']:.2f} ms, postgres "
                    f"{r['postgres_cpu_ms_per_req']:.2f} ms  connections opened {r['connections_opened']}  "
                    f"(load {r['load_1min']:.2f})",
                    flush=True,
                )
        load_after = os.getloadavg()
        report(results, args, load_before, load_after)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        from infra.db.session import get_engine

        get_engine.cache_clear()
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
