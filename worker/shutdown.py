"""A graceful stop of a worker (SIGTERM, or the first Ctrl-C): the run it executes stops at its
next safe point, saves a checkpoint, hands its lease back without spending one of the run's
attempts, and is sent again, so another worker (or this one, restarted) continues at once.

Celery's warm shutdown happens in the worker's main process; a run executes in a pool child
(prefork) or in the main process (solo, threads). The main process marks the stop with a flag
file under MBPO_HOME/workers/, named by host and pid, which the run checks between steps: the
child by its parent's pid, an in-process task by its own.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from infra.settings import Settings


def _flag(settings: Settings, pid: int) -> Path:
    return settings.home_dir / "workers" / f"{socket.gethostname()}-{pid}.stopping"


def request_stop(settings: Settings) -> None:
    """Called in the worker's main process when its warm shutdown begins."""
    flag = _flag(settings, os.getpid())
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()


def clear_stop(settings: Settings) -> None:
    """Called when a worker starts: a flag left by an earlier process with this pid is stale."""
    with contextlib.suppress(FileNotFoundError):
        _flag(settings, os.getpid()).unlink()


def stop_requested(settings: Settings) -> bool:
    return any(_flag(settings, pid).exists() for pid in (os.getpid(), os.getppid()))
