"""Embedded mode end to end: `mbpo serve` with only a temporary MBPO_HOME (no DATABASE_URL, no
BROKER_URL) serves the API, runs its own workers (one for runs, one for inference and datasets) on
a SQLite broker, restarts a worker that dies, validates uploads, and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mbpo_cli.serve import LOCAL_WORKERS
from tests.helpers import datasets as ds
from tests.helpers import services


@dataclass
class Served:
    url: str
    home: Path
    roots: Path
    log: Path
    env: dict[str, str]
    pid: int

    def key(self) -> str:
        return (self.home / "admin_key").read_text().strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("embedded")
    (base / "roots").mkdir()
    env = services.service_env(MBPO_HOME=str(base / "home"), MBPO_DATA_ROOTS=str(base / "roots"))
    log = base / "serve.log"
    with services.embedded_serve([], env, log, timeout=90) as (url, proc):
        yield Served(url=url, home=base / "home", roots=base / "roots", log=log, env=env, pid=proc.pid)


def _wait_validated(served: Served, headers: dict[str, str], dataset_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = httpx.get(f"{served.url}/v1/datasets/{dataset_id}", headers=headers, timeout=5).json()
        return body if body["status"] != "validating" else None

    return services.wait_for(done, timeout=60, interval=0.5, what="embedded validation")


def test_serve_prints_and_keeps_a_dev_admin_key(served: Served) -> None:
    key = served.key()
    assert key.startswith("mbpo_")
    assert key in served.log.read_text()
    assert (served.home / "admin_key").stat().st_mode & 0o077 == 0


def _cmdline(pid: int) -> list[bytes]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _worker_pids(server_pid: int) -> dict[str, int]:
    """The `mbpo worker` processes started by the server (its direct children), by local worker
    name (`--hostname <name>@%h`)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        cmdline = _cmdline(int(entry.name))
        if ppid == server_pid and b"worker" in cmdline:
            pids[cmdline[cmdline.index(b"--hostname") + 1].decode().split("@")[0]] = int(entry.name)
    return pids


def test_a_crashed_local_worker_is_restarted(served: Served) -> None:
    before = _worker_pids(served.pid)
    assert set(before) == {spec.name for spec in LOCAL_WORKERS}  # runs apart from inference
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    for spec in LOCAL_WORKERS:
        services.wait_for(
            lambda name=spec.name: f"local {name} worker exited" in served.log.read_text(errors="replace"),
            timeout=30,
            what=f"{spec.name} restart",
        )
        services.wait_for(
            lambda name=spec.name: (
                len(re.findall(rf"\b{name}@\S+ ready\.", served.log.read_text(errors="replace"))) >= 2
            ),
            timeout=60,
            what=f"new {spec.name} worker ready",
        )
    after = _worker_pids(served.pid)
    assert set(after) == set(before) and not set(after.values()) & set(before.values())


def test_embedded_upload_becomes_ready_without_servers(served: Served, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {served.key()}"}
    ready = httpx.get(f"{served.url}/readyz", timeout=10).json()
    assert ready["embedded"] is True
    assert ready["checks"] == {"database": "ok", "broker": "ok", "disk": "ok"}
    root = ds.make_dataset_dir(tmp_path / "src")
    resp = httpx.post(
        f"{served.url}/v1/datasets",
        data={"name": "embedded"},
        files={
            "manifest": ("manifest.jsonl", (root / "manifest.jsonl").read_bytes()),
            "images": ("images.zip", ds.zip_dir_images(root)),
        },
        headers=headers,
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    body = _wait_validated(served, headers, resp.json()["id"])
    assert body["status"] == "ready" and body["num_samples"] == 5
    assert (served.home / "mbpo.db").is_file() and (served.home / "broker.db").is_file()
    assert (served.home / "datasets" / body["id"] / "images" / "0.png").is_file()

    on_disk = ds.make_dataset_dir(served.roots / "shapes")
    resp = httpx.post(
        f"{served.url}/v1/datasets", json={"name": "path", "path": str(on_disk)}, headers=headers, timeout=30
    )
    assert _wait_validated(served, headers, resp.json()["id"])["status"] == "ready"


def test_keys_create_makes_a_working_non_admin_key(served: Served) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mbpo_cli.main", "keys", "create", "--name", "carol"],
        env=served.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("mbpo_")
    resp = httpx.get(f"{served.url}/v1/datasets", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert resp.status_code == 200
    assert resp.json()["data"] == []  # carol sees none of the admin's datasets


def _process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree += children
        frontier += children
    return tree


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_server_and_leaves_no_process_behind(tmp_path: Path) -> None:
    env = services.service_env(MBPO_HOME=str(tmp_path / "home"))
    log = tmp_path / "serve.log"
    proc = services.start_mbpo(["serve", "--port", str(services.free_port())], env, log)
    try:
        services.wait_for(lambda: services.local_workers_ready(log), timeout=90, what="workers")
        tree = _process_tree(proc.pid)
        # the server, its two workers and the run worker's pool child
        assert len(tree) >= 4 and set(_worker_pids(proc.pid)) == {s.name for s in LOCAL_WORKERS}, tree
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) != -signal.SIGKILL
        services.wait_for(lambda: not any(_alive(p) for p in tree), timeout=30, what="every process to exit")
    finally:
        services.stop_process_group(proc)
