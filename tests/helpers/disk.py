"""A small filesystem of its own (a size-limited tmpfs) for tests that fill a disk for real.

Mounting needs root (CAP_SYS_ADMIN), which CI and this machine kind have; elsewhere the tests that
need it are skipped (failed under MBPO_TEST_REQUIRE_SERVICES=1, like a missing database)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.services import services_required


def mount_tmpfs(where: Path, size_mib: int) -> str | None:
    """Mount a tmpfs of `size_mib` MiB on `where` (created); None on success, else why it failed."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return None if mounted.returncode == 0 else f"cannot mount a tmpfs: {mounted.stderr.strip()}"


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)


def skip_without_mount(why: str) -> None:
    message = f"{why} (a disk-full test needs root to mount a small filesystem)"
    if services_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def small_filesystem(where: Path, size_mib: int) -> Iterator[Path]:
    """`where`, mounted as a tmpfs of `size_mib` MiB for the duration of the block."""
    failed = mount_tmpfs(where, size_mib)
    if failed is not None:
        skip_without_mount(failed)
    try:
        yield where
    finally:
        unmount(where)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a ballast file into `directory` until the filesystem has at most `leave_bytes` free."""
    ballast = directory / "ballast"
    chunk = b"\0" * (1 << 20)
    with ballast.open("wb") as f:
        while True:
            free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
            if free <= leave_bytes:
                break
            try:
                f.write(chunk[: max(min(len(chunk), free - leave_bytes), 1)])
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return ballast
