"""Run-event delivery benchmark on the production stack: `mbpo api` (uvicorn) on PostgreSQL with
Redis pub/sub, events written exactly as the worker writes them (append in a transaction, commit,
publish).

1. Latency: one SSE client; the emitter writes `--events` events at `--rate` per second, each
   carrying its emit time; latency = receive time - emit time. Reports p50/p99 (goal p99 < 250 ms).
2. Fan-out: `--clients` SSE clients on one run for `--duration` seconds while events are emitted at
   `--fanout-rate`; reports delivered/expected, gaps, duplicates, errors, latency over all
   deliveries, and the API process's RSS at the start, middle and end (stable memory = no growth
   with time), then checks every client's stream is complete and ordered.

    .venv/bin/python bench/events.py [--clients 200] [--duration 60]

Creates a throwaway database (mbpo_bench_<random>) on --pg-admin-url and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api.auth.service import create_api_key  # noqa: E402
from infra.db.migrate import upgrade_to_head  # noqa: E402
from infra.db.models import BaseModelRecord, Run  # noqa: E402
from infra.db.session import make_engine, make_session_factory  # noqa: E402
from infra.events.publish import publish_events  # noqa: E402
from infra.events.store import append_event, event_payload  # noqa: E402
from infra.settings import Settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn runs in the child of `mbpo api`)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            if int(entry.name) != pid and int(stat[3]) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Emitter:
    """Writes events the way worker.runs.RunRecorder does."""

    def __init__(self, url: str, settings: Settings, run_id: str):
        self.factory = make_session_factory(make_engine(url))
        self.settings = settings
        self.run_id = run_id

    def emit(self, i: int, type_: str = "stage_progress") -> None:
        with self.factory() as session:
            event = append_event(
                session, self.run_id, type_, f"event {i}", stage="training", data={"i": i, "t": time.time()}
            )
            payload = event_payload(event)
            session.commit()
        publish_events(self.settings, [payload])

    def finish(self) -> None:
        with self.factory() as session:
            session.query(Run).filter(Run.id == self.run_id).update({"status": "succeeded"})
            payload = event_payload(
                append_event(session, self.run_id, "run_succeeded", "done", data={"t": time.time()})
            )
            session.commit()
        publish_events(self.settings, [payload])

    def run(self, count: int, rate: float, stop: threading.Event | None = None) -> int:
        start = time.monotonic()
        i = 0
        while i < count and not (stop is not None and stop.is_set()):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.emit(i)
            i += 1
        return i


class Client:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.ended = False


async def sse_client(
    http: httpx.AsyncClient, path: str, out: Client, ready: asyncio.Event | None = None
) -> None:
    block: dict[str, str] = {}
    try:
        async with http.stream("GET", path) as response:
            if response.status_code != 200:
                out.errors.append(f"status {response.status_code}")
                return
            if ready is not None:
                ready.set()
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in block:
                        payload = json.loads(block["data"])
                        out.seqs.append(payload["seq"])
                        if "t" in payload["data"]:
                            out.latencies.append(time.time() - payload["data"]["t"])
                    block = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    block[name] = value.lstrip(" ")
        out.ended = True
    except Exception as exc:  # counted, reported
        out.errors.append(f"{type(exc).__name__}: {exc}")


def check(client: Client, expected: list[int]) -> tuple[int, int]:
    """(gaps, duplicates) of a client's sequence against the expected one."""
    duplicates = len(client.seqs) - len(set(client.seqs))
    gaps = len(set(expected) - set(client.seqs))
    return gaps, duplicates


async def latency_phase(url: str, key: str, emitter: Emitter, events: int, rate: float) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(None, connect=10)
    ) as http:
        client = Client()
        ready = asyncio.Event()
        task = asyncio.create_task(
            sse_client(http, f"/v1/runs/{emitter.run_id}/events/stream", client, ready)
        )
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(emitter.run, events, rate)
        await asyncio.to_thread(emitter.finish)
        await asyncio.wait_for(task, 60)
    lat = [x * 1000 for x in client.latencies]
    return {
        "events": events,
        "received": len(client.seqs),
        "p50_ms": round(percentile(lat, 0.50), 1),
        "p99_ms": round(percentile(lat, 0.99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "errors": client.errors,
    }


async def fanout_phase(
    url: str, key: str, emitter: Emitter, api_pid: int, clients: int, duration: float, rate: float
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(None, connect=30),
        limits=limits,
    ) as http:
        outs = [Client() for _ in range(clients)]
        path = f"/v1/runs/{emitter.run_id}/events/stream"
        tasks = [asyncio.create_task(sse_client(http, path, out)) for out in outs]
        await asyncio.sleep(3)  # every client connected and replayed
        memory = [("start", rss_mib(api_pid))]
        stop = threading.Event()
        emit = asyncio.create_task(asyncio.to_thread(emitter.run, 1_000_000, rate, stop))
        started = time.monotonic()
        for label, at in (("middle", duration / 2), ("end", duration)):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            memory.append((label, rss_mib(api_pid)))
        stop.set()
        sent = await emit
        await asyncio.to_thread(emitter.finish)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        memory.append(("after close", rss_mib(api_pid)))
    expected = outs[0].seqs and list(range(1, max(max(o.seqs) for o in outs if o.seqs) + 1))
    gaps = dups = 0
    for out in outs:
        g, d = check(out, expected or [])
        gaps, dups = gaps + g, dups + d
    latencies = [x * 1000 for out in outs for x in out.latencies]
    return {
        "clients": clients,
        "duration_s": duration,
        "events_emitted": sent + 1,
        "deliveries": sum(len(o.seqs) for o in outs),
        "expected_deliveries": clients * len(expected or []),
        "gaps": gaps,
        "duplicates": dups,
        "errors": sum(len(o.errors) for o in outs),
        "error_samples": [e for o in outs for e in o.errors][:5],
        "streams_closed_by_server": sum(o.ended for o in outs),
        "latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(percentile(latencies, 0.99), 1),
        "api_rss_mib": {label: round(v, 1) for label, v in memory},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("MBPO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("MBPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="events/s in the latency phase")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--fanout-rate", type=float, default=5.0, help="events/s in the fan-out phase")
    args = parser.parse_args()

    name = f"mbpo_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = "postgresql+psycopg://" + args.pg_admin_url.rsplit("/", 1)[0].split("://", 1)[1] + f"/{name}"
    prefix = f"mbpo_bench_{uuid.uuid4().hex[:8]}:"
    home = Path(f"/tmp/{name}")
    proc = None
    try:
        upgrade_to_head(url)
        factory = make_session_factory(make_engine(url))
        with factory.begin() as session:
            row, key = create_api_key(session, user_name="bench", key_name="bench", admin=False)
            model = BaseModelRecord(
                owner_id=row.user_id,
                name="m",
                path="/m",
                family="qwen2_vl",
                model_type="qwen2_vl",
                param_count=1,
            )
            session.add(model)
            session.flush()
            runs = []
            for label in ("latency", "fanout"):
                run = Run(
                    owner_id=row.user_id,
                    base_model_id=model.id,
                    name=label,
                    config={},
                    stage_progress={},
                    latest_metrics={},
                    status="training",
                )
                session.add(run)
                session.flush()
                runs.append(run.id)
        settings = Settings(
            env="test", database_url=url, broker_url=args.redis_url, broker_key_prefix=prefix, home=home
        )
        port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MBPO_") and k not in {"DATABASE_URL", "BROKER_URL"}
        }
        env.update(
            DATABASE_URL=url,
            BROKER_URL=args.redis_url,
            MBPO_BROKER_KEY_PREFIX=prefix,
            MBPO_HOME=str(home),
            MBPO_ENV="test",
            MBPO_LOG_LEVEL="WARNING",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "mbpo_cli.main", "api", "--port", str(port)],
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        latency = asyncio.run(
            latency_phase(base, key, Emitter(url, settings, runs[0]), args.events, args.rate)
        )
        print(json.dumps({"latency": latency}, indent=2), flush=True)
        fanout = asyncio.run(
            fanout_phase(
                base,
                key,
                Emitter(url, settings, runs[1]),
                proc.pid,
                args.clients,
                args.duration,
                args.fanout_rate,
            )
        )
        print(json.dumps({"fanout": fanout}, indent=2), flush=True)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
