"""Helpers for run tests: the quick testbed, small dataset subsets, a tiny run config that finishes
in well under a minute on two cores, the service as real subprocesses, and an SSE reader."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import services

# Small enough to finish in seconds per stage on a loaded 2-core machine, real enough to exercise
# every stage: IIG scoring, PGD mining, hybrid GRPO with checkpoints, base vs aligned evaluation.
QUICK_RUN_CONFIG: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "iig": {"keep_fraction": 0.5, "batch_size": 16},
    "attack": {"steps": 3, "batch_size": 8},
    "mining": {"limit": 12, "max_new_tokens": 4, "random_noise_baseline": False},
    "train": {
        "max_steps": 3,
        "prompts_per_step": 2,
        "num_generations": 4,
        "max_completion_length": 4,
        "save_steps": 1,
        "learning_rate": 1e-4,
    },
    "eval": {"limit": 8, "batch_size": 16, "max_new_tokens": 4, "attack_eval": False},
}


def quick_config(**train: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(QUICK_RUN_CONFIG))
    config["train"].update(train)
    return config


def quick_testbed() -> Path:
    """The cached quick testbed (built on first use; shared with the mbpo_core and browser tests).
    `MBPO_TEST_TESTBED` names an already built testbed to use instead (local iteration)."""
    from tests.helpers.testbed import quick_testbed_path

    if os.environ.get("MBPO_TEST_TESTBED"):
        return Path(os.environ["MBPO_TEST_TESTBED"])
    return quick_testbed_path()


def write_subset(testbed: Path, split: str, out_dir: Path, n: int) -> Path:
    """The first `n` samples of a testbed split, with their images, as a dataset directory."""
    source = testbed / "datasets" / split
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    lines = (source / "manifest.jsonl").read_text().splitlines()[:n]
    for line in lines:
        image = json.loads(line)["image"]
        if not (out_dir / image).exists():
            shutil.copyfile(source / image, out_dir / image)
    (out_dir / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out_dir


@dataclass
class Stack:
    """`mbpo api` and `mbpo worker` subprocesses sharing one environment."""

    env: dict[str, str]
    base: Path
    port: int = field(default_factory=services.free_port)
    api: subprocess.Popen[Any] | None = None
    workers: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self) -> None:
        log = self.base / "api.log"
        self.api = services.start_mbpo(["api", "--port", str(self.port)], self.env, log)

        def up() -> bool:
            assert self.api is not None and self.api.poll() is None, log.read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        services.wait_for(up, timeout=90, interval=0.3, what="mbpo api")

    def start_worker(self, queues: str = "cpu,gpu", concurrency: int = 2) -> Path:
        log = self.base / f"worker-{len(self.workers)}.log"
        proc = services.start_mbpo(
            ["worker", "--queues", queues, "--concurrency", str(concurrency)], self.env, log
        )
        self.workers.append(proc)
        services.wait_for(
            lambda: proc.poll() is not None or "ready." in log.read_text(errors="replace"),
            timeout=90,
            what="celery worker",
        )
        assert proc.poll() is None, log.read_text()
        return log

    def kill_worker(self, index: int = -1) -> None:
        """SIGKILL the worker and its pool children at once: no cleanup, no acknowledgement."""
        proc = self.workers[index]
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def worker_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.base.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            services.stop_process_group(proc)


def wait_status(
    client: httpx.Client, run_id: str, statuses: set[str], timeout: float = 240
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        return body if body["status"] in statuses else None

    return services.wait_for(reached, timeout=timeout, interval=0.5, what=f"run {run_id} to reach {statuses}")


def all_events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(f"/v1/runs/{run_id}/events", params={"after": after, "limit": 1000}).json()
        events += page["data"]
        if not page["data"]:
            return events
        after = page["last_seq"]


def read_sse(
    client: httpx.Client,
    path: str,
    *,
    last_event_id: int | None = None,
    max_events: int | None = None,
    timeout: float = 240,
) -> tuple[list[dict[str, Any]], int, bool]:
    """(events, keep-alive comments seen, whether the server ended the stream). Stops early after
    `max_events` events (the client disconnects)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events: list[dict[str, Any]] = []
    pings = 0
    block: dict[str, str] = {}
    with client.stream("GET", path, headers=headers, timeout=httpx.Timeout(timeout, connect=10)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                pings += 1
            elif line == "":
                if "data" in block and "id" in block:
                    payload = json.loads(block["data"])
                    assert int(block["id"]) == payload["seq"]
                    assert block.get("event") == payload["type"]
                    events.append(payload)
                    if max_events is not None and len(events) >= max_events:
                        return events, pings, False
                block = {}
            else:
                name, _, value = line.partition(":")
                block[name] = value.lstrip(" ")
    return events, pings, True


def checkpoint_dirs(checkpoints: Path) -> list[str]:
    """Names of the published checkpoints (`checkpoint-N`) in a run's checkpoints directory."""
    if not checkpoints.is_dir():
        return []
    return sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
