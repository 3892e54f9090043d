"""Run budgets (worker.budget): wall time and resident memory, measured on this process."""

from __future__ import annotations

import threading
import time

import psutil

from infra.settings import Settings
from worker import budget as b


def test_time_budget() -> None:
    budget = b.RunBudget(max_seconds=0.2, max_memory=None)
    assert budget.exceeded() is None
    time.sleep(0.3)
    over = budget.exceeded()
    assert over is not None and over[0] == "time_budget_exceeded" and "MBPO_RUN_MAX_SECONDS" in over[1]


def test_memory_budget_is_crossed_by_a_real_allocation() -> None:
    rss = psutil.Process().memory_info().rss
    budget = b.RunBudget(max_seconds=None, max_memory=rss + 64 * 2**20)
    assert budget.exceeded() is None
    ballast = bytearray(160 * 2**20)  # touched pages count towards the resident size
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    over = budget.exceeded()
    del ballast
    assert over is not None and over[0] == "memory_budget_exceeded"
    assert "MBPO_RUN_MAX_MEMORY_BYTES" in over[1] and budget.peak_memory > rss


def test_the_watchdog_ends_a_run_that_keeps_growing() -> None:
    rss = psutil.Process().memory_info().rss
    ended: list[tuple[str, str]] = []
    exits: list[int] = []
    done = threading.Event()

    def record(code: str, message: str) -> None:
        ended.append((code, message))

    def exit_(code: int) -> None:  # os._exit in a worker; here: note it and let the test go on
        exits.append(code)
        done.set()

    budget = b.RunBudget(max_seconds=None, max_memory=rss + 32 * 2**20, on_hard_limit=record, exit=exit_)
    budget.start()
    try:
        # Grows past 1.5x the budget between two safe points (nobody calls exceeded()).
        ballast = bytearray(int(0.5 * rss) + 256 * 2**20)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        assert done.wait(10), "the watchdog did not act"
    finally:
        budget.stop()
    del ballast
    assert exits == [b.HARD_EXIT_CODE]
    assert ended and ended[0][0] == "memory_budget_exceeded" and "kept growing" in ended[0][1]


def test_defaults() -> None:
    total = psutil.virtual_memory().total
    assert b.memory_limit(Settings()) == int(total * b.DEFAULT_MEMORY_FRACTION)
    assert b.memory_limit(Settings(run_max_memory_bytes=0)) is None
    assert b.memory_limit(Settings(run_max_memory_bytes=123)) == 123
