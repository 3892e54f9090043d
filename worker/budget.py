"""Budgets of a run attempt: wall time and resident memory (`MBPO_RUN_MAX_SECONDS`,
`MBPO_RUN_MAX_MEMORY_BYTES`).

A run spec the schema accepts can still ask for more than the host has (a huge model, a huge batch).
Instead of letting it take the host down, the attempt is measured while it runs:

- `exceeded()` is asked at every safe point (`RunRecorder.should_stop`); once a budget is exceeded
  the run stops there, saves a checkpoint like a cancel does, and fails with
  `error.code = time_budget_exceeded | memory_budget_exceeded` and a message that says what to change.
- Memory can grow between safe points (one allocation of many GB inside a library call), so a
  watchdog thread samples the resident size every `SAMPLE_SECONDS`. When the run keeps growing past
  `HARD_FACTOR` x the budget, or does not reach a safe point within `GRACE_SECONDS` of exceeding it,
  the watchdog calls `on_hard_limit` (which records the failure) and ends this process: the worker
  is restarted by its supervisor, and the run, already failed, is not retried.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from infra.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.5
GRACE_SECONDS = 30.0
HARD_FACTOR = 1.5
DEFAULT_MEMORY_FRACTION = 0.8  # of the host's memory, when MBPO_RUN_MAX_MEMORY_BYTES is unset
HARD_EXIT_CODE = 70


def memory_limit(settings: Settings) -> int | None:
    """The resident-memory budget in bytes (None: no limit)."""
    if settings.run_max_memory_bytes is None:
        return int(psutil.virtual_memory().total * DEFAULT_MEMORY_FRACTION)
    return settings.run_max_memory_bytes or None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass
class RunBudget:
    """The budgets of one attempt, measured from its start."""

    max_seconds: float | None
    max_memory: int | None
    on_hard_limit: Callable[[str, str], None] = lambda code, message: None
    rss: Callable[[], int] = field(default=lambda: psutil.Process().memory_info().rss)
    exit: Callable[[int], None] = os._exit
    started: float = field(default_factory=time.monotonic)
    peak_memory: int = 0
    _over: tuple[str, str] | None = None
    _over_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, on_hard_limit: Callable[[str, str], None]) -> RunBudget:
        return cls(settings.run_max_seconds or None, memory_limit(settings), on_hard_limit)

    def exceeded(self) -> tuple[str, str] | None:
        """(error code, message) once a budget is exceeded; None while within both."""
        if self._over is None and self.max_seconds is not None:
            elapsed = time.monotonic() - self.started
            if elapsed > self.max_seconds:
                self._over = (
                    "time_budget_exceeded",
                    f"the attempt ran {elapsed:.0f}s, over MBPO_RUN_MAX_SECONDS={self.max_seconds:.0f}; "
                    "lower train.max_steps or the dataset sizes, or raise the budget",
                )
        if self._over is None:
            self._sample()
        return self._over

    def _sample(self) -> int:
        rss = self.rss()
        self.peak_memory = max(self.peak_memory, rss)
        if self._over is None and self.max_memory is not None and rss > self.max_memory:
            self._over = (
                "memory_budget_exceeded",
                f"the worker reached {_gib(rss)} resident memory, over the run budget of "
                f"{_gib(self.max_memory)} (MBPO_RUN_MAX_MEMORY_BYTES); lower the batch sizes "
                "(train.prompts_per_step, num_generations, mining/eval batch_size) or use a smaller model",
            )
            self._over_since = time.monotonic()
            log.error("run budget: %s", self._over[1])
        return rss

    # ---- the watchdog ------------------------------------------------------------------------

    def start(self) -> None:
        if self.max_memory is None:
            return
        self._thread = threading.Thread(target=self._watch, name="run-budget", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        assert self.max_memory is not None
        while not self._stop.wait(SAMPLE_SECONDS):
            rss = self._sample()
            if self._over is None or self._over_since is None:
                continue
            growing = rss > HARD_FACTOR * self.max_memory
            stuck = time.monotonic() - self._over_since > GRACE_SECONDS
            if growing or stuck:
                code, message = self._over
                why = "kept growing" if growing else f"reached no safe point within {GRACE_SECONDS:.0f}s"
                message = f"{message}; it {why} and was ended at once"
                log.error("run budget: %s", message)
                try:
                    self.on_hard_limit(code, message)
                finally:
                    self.exit(HARD_EXIT_CODE)
                return
