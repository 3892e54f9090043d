"""Progress reporting and cooperative cancellation for training.

The trainer knows nothing of run events, progress bars or cancel flags: it reports a
`ProgressEvent` after every logged step to a `ProgressCallback`, and between steps asks a
`should_stop` function whether to end. The worker turns events into run events and reads the
run's cancel flag; the CLI draws a progress bar and stops on Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from transformers import TrainerCallback

# TRL's log keys for the metrics every consumer expects, and the names they are reported under.
METRIC_KEYS = {
    "loss": "loss",
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "rewards/online/mean": "reward_online_mean",
    "rewards/online/std": "reward_online_std",
    "rewards/offline_sampled/mean": "reward_offline_mean",
    "rewards/offline_sampled/std": "reward_offline_std",
    "kl": "kl",
    "clip_ratio/region_mean": "clip_ratio",
    "completions/mean_length": "completion_length",
    "learning_rate": "learning_rate",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "num_tokens": "num_tokens",  # running total of prompt and completion tokens (tokens/s)
}


@dataclass(frozen=True)
class ProgressEvent:
    """Where training stands after `step` of `total` optimiser steps."""

    stage: str
    step: int
    total: int
    elapsed_s: float
    eta_s: float | None
    metrics: dict[str, float] = field(default_factory=dict)


class ProgressCallback(Protocol):
    def __call__(self, event: ProgressEvent) -> None: ...


def select_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """The documented metrics present in a TRL log record, under their reported names."""
    return {
        name: float(logs[key]) for key, name in METRIC_KEYS.items() if isinstance(logs.get(key), int | float)
    }


def eta_seconds(elapsed_s: float, steps_done: int, steps_left: int) -> float | None:
    """Remaining time at the average pace of the steps run by this process so far."""
    if steps_done <= 0:
        return None
    return elapsed_s / steps_done * steps_left


class ProgressBridge(TrainerCallback):
    """Trainer callback -> `ProgressCallback` events, and `should_stop` -> save and stop.

    `agree` turns this process's stop wish into the decision of all processes (a max-reduce under
    accelerate), so every process leaves the loop after the same step."""

    def __init__(
        self,
        report: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        agree: Callable[[bool], bool] = lambda wish: wish,
        stage: str = "training",
    ):
        self.report = report
        self.should_stop = should_stop
        self.agree = agree
        self.stage = stage
        self.cancelled = False
        self._start_time = 0.0
        self._start_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start_time = time.monotonic()
        self._start_step = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        wish = bool(self.should_stop and self.should_stop())
        if self.agree(wish):
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.report is None or not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        elapsed = time.monotonic() - self._start_time
        self.report(
            ProgressEvent(
                stage=self.stage,
                step=state.global_step,
                total=state.max_steps,
                elapsed_s=elapsed,
                eta_s=eta_seconds(
                    elapsed, state.global_step - self._start_step, state.max_steps - state.global_step
                ),
                metrics=select_metrics(logs),
            )
        )
