"""Verified rewards (docs/method.md §4): accuracy (0/1) + format (0/1), so the best answer earns 2.

Pure functions over `mbpo_core.data.verifiers`, so an answer is judged the same way by training, mining
and evaluation. Torch-free.

    accuracy_reward("yes_no", "Yes.", "yes")                          -> 1.0
    accuracy_reward("yes_no", "no", "yes")                            -> 0.0
    accuracy_reward("multiple_choice", "(B)", "B", ["red", "blue"])   -> 1.0
    accuracy_reward("number", "three", "3")                           -> 1.0
    format_reward("yes_no", "no")                                     -> 1.0  (wrong, but well formed)
    format_reward("yes_no", "circle circle")                          -> 0.0
    format_reward("multiple_choice", "purple", ["red", "blue"])       -> 0.0
    verified_reward("yes_no", "Yes.", "yes")                          -> 2.0

The `trl_*` functions below have the signature TRL's `GRPOTrainer` expects of `reward_funcs`:
`f(prompts, completions, completion_ids, **columns) -> list[float]`, one reward per completion,
reading the dataset columns `task`, `answer` and `choices` of each row.

Users add their own (`train.reward_funcs`) as entry points of an installed package, never as
uploaded code:

    # pyproject.toml of the user's package
    [project.entry-points."mbpo.rewards"]
    brevity = "my_rewards:brevity"      # my_rewards.brevity(prompts, completions, **columns) -> list[float]
                                        # with brevity.max_reward = 1.0 (what a chosen offline answer earns)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from mbpo_core.data.verifiers import is_correct, parse_answer

ACCURACY_MAX = 1.0
FORMAT_MAX = 1.0
MAX_REWARD = ACCURACY_MAX + FORMAT_MAX


def accuracy_reward(
    task: str, prediction: str, answer: str, choices: Sequence[str] | None = None, tolerance: float = 0.0
) -> float:
    """1.0 when `prediction` means the ground truth `answer` after normalisation, else 0.0.

    An unparsable prediction is wrong (0.0); `tolerance` is the absolute slack for numbers."""
    return ACCURACY_MAX if is_correct(task, prediction, answer, choices, tolerance=tolerance) else 0.0


def format_reward(task: str, prediction: str, choices: Sequence[str] | None = None) -> float:
    """1.0 when `prediction` has the form the task asks for (a yes/no, an option, a number), else 0.0.

    Correctness plays no part: "no" to a yes-question is well formed."""
    return FORMAT_MAX if parse_answer(task, prediction, choices) is not None else 0.0


def verified_reward(
    task: str, prediction: str, answer: str, choices: Sequence[str] | None = None, tolerance: float = 0.0
) -> float:
    """accuracy + format, in [0, MAX_REWARD]: a right answer is always well formed, so the values are
    0 (garbled), 1 (well formed but wrong) and 2 (right)."""
    correct = accuracy_reward(task, prediction, answer, choices, tolerance)
    return correct + format_reward(task, prediction, choices)


def completion_text(completion: Any) -> str:
    """The answer text of one TRL completion: a plain string, or a conversational completion
    `[{"role": "assistant", "content": str | [{"type": "text", "text": ...}]}]`."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _row_choices(choices: Sequence[Any] | None, index: int) -> Sequence[str] | None:
    if choices is None:
        return None
    row = choices[index]
    return list(row) if row else None


def accuracy(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    task: Sequence[str],
    answer: Sequence[str],
    choices: Sequence[Any] | None = None,
    **_: Any,
) -> list[float]:
    """TRL reward function: `accuracy_reward` per completion (named for TRL's `rewards/accuracy` metric)."""
    del prompts
    return [
        accuracy_reward(task[i], completion_text(c), answer[i], _row_choices(choices, i))
        for i, c in enumerate(completions)
    ]


def answer_format(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    task: Sequence[str],
    choices: Sequence[Any] | None = None,
    **_: Any,
) -> list[float]:
    """TRL reward function: `format_reward` per completion (TRL logs it as `rewards/answer_format`)."""
    del prompts
    return [
        format_reward(task[i], completion_text(text), _row_choices(choices, i))
        for i, text in enumerate(completions)
    ]


# What the trainer passes to GRPOTrainer(reward_funcs=...). Their sum is `verified_reward`; each
# function's maximum is what a chosen offline answer is credited with (docs/method.md §5: reward = max).
TRL_REWARD_FUNCS = (accuracy, answer_format)
TRL_REWARD_MAXIMA = (ACCURACY_MAX, FORMAT_MAX)


# ---- user rewards (entry points) -----------------------------------------------------------------

REWARD_ENTRY_POINTS = "mbpo.rewards"
RewardFunc = Callable[..., list[float]]


class RewardPluginError(ValueError):
    """A `train.reward_funcs` name that no installed package provides, or a bad reward function."""


def installed_rewards() -> list[str]:
    """Names of the reward functions installed packages provide (entry point group `mbpo.rewards`)."""
    return sorted({ep.name for ep in entry_points(group=REWARD_ENTRY_POINTS)})


def load_reward_funcs(names: Sequence[str]) -> tuple[list[RewardFunc], list[float]]:
    """The functions and maxima of the named `mbpo.rewards` entry points, in order."""
    found = {ep.name: ep for ep in entry_points(group=REWARD_ENTRY_POINTS)}
    funcs: list[RewardFunc] = []
    maxima: list[float] = []
    for name in names:
        if name not in found:
            have = ", ".join(sorted(found)) or "none"
            raise RewardPluginError(
                f"train.reward_funcs: no installed package provides a reward named {name!r} "
                f"(entry point group {REWARD_ENTRY_POINTS!r}; installed: {have})"
            )
        func = found[name].load()
        top = getattr(func, "max_reward", None)
        if not callable(func):
            raise RewardPluginError(f"train.reward_funcs: {name!r} ({found[name].value}) is not callable")
        if isinstance(top, bool) or not isinstance(top, int | float) or not math.isfinite(top):
            raise RewardPluginError(
                f"train.reward_funcs: {name!r} needs a finite numeric `max_reward` attribute (the reward "
                "a chosen offline answer is credited with)"
            )
        funcs.append(func)
        maxima.append(float(top))
    return funcs, maxima
