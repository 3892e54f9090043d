"""Verified rewards: accuracy + format per task type, and the TRL reward-function adapters."""

from __future__ import annotations

import pytest

from mbpo_core.training.rewards import (
    MAX_REWARD,
    TRL_REWARD_FUNCS,
    accuracy,
    accuracy_reward,
    answer_format,
    completion_text,
    format_reward,
    verified_reward,
)

COLOURS = ["red", "blue", "green"]


@pytest.mark.parametrize(
    ("task", "prediction", "answer", "choices", "expected"),
    [
        ("yes_no", "Yes.", "yes", None, 2.0),
        ("yes_no", "no", "yes", None, 1.0),
        ("yes_no", "circle circle", "yes", None, 0.0),
        ("multiple_choice", "(B)", "B", COLOURS, 2.0),
        ("multiple_choice", "blue", "B", COLOURS, 2.0),
        ("multiple_choice", "A.", "B", COLOURS, 1.0),
        ("multiple_choice", "purple", "B", COLOURS, 0.0),
        ("number", "three", "3", None, 2.0),
        ("number", "There are 2 circles.", "3", None, 1.0),
        ("number", "many", "3", None, 0.0),
    ],
)
def test_verified_reward_is_accuracy_plus_format(task, prediction, answer, choices, expected):
    assert verified_reward(task, prediction, answer, choices) == expected
    parts = accuracy_reward(task, prediction, answer, choices) + format_reward(task, prediction, choices)
    assert parts == expected
    assert 0.0 <= expected <= MAX_REWARD


def test_completion_text_reads_plain_and_conversational_completions():
    assert completion_text("yes") == "yes"
    assert completion_text([{"role": "assistant", "content": "no"}]) == "no"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "B"}]}]) == "B"


def test_trl_reward_functions_read_dataset_columns_per_row():
    completions = [[{"role": "assistant", "content": t}] for t in ("Yes", "no", "blue", "x")]
    columns = {
        "task": ["yes_no", "yes_no", "multiple_choice", "multiple_choice"],
        "answer": ["yes", "yes", "B", "B"],
        "choices": [None, None, COLOURS, COLOURS],
    }
    prompts = [[{"role": "user", "content": "q"}]] * 4
    assert accuracy(prompts, completions, completion_ids=None, **columns) == [1.0, 0.0, 1.0, 0.0]
    assert answer_format(prompts, completions, completion_ids=None, **columns) == [1.0, 1.0, 1.0, 0.0]
    assert [f.__name__ for f in TRL_REWARD_FUNCS] == ["accuracy", "answer_format"]
