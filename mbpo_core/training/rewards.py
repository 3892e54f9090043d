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
"""

from __future__ import annotations

from collections.abc import Sequence
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
