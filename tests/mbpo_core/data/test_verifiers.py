"""Verifiers on tables of tricky strings: what a small model, or a chatty large one, actually says."""

from __future__ import annotations

import pytest

from mbpo_core.data.verifiers import (
    is_correct,
    normalize_choice,
    normalize_open,
    normalize_yes_no,
    parse_answer,
    parse_number,
)

COLOURS = ["red", "blue", "green", "dark blue"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("YES!", "yes"),
        ("  yes, there is  ", "yes"),
        ("Yes, there is no doubt.", "yes"),
        ("No", "no"),
        ("no.", "no"),
        ("No, there is not.", "no"),
        ("Nope", "no"),
        ("I think so... yes", "yes"),
        ("There is no blue square.", "no"),
        ("maybe yes, maybe no", None),
        ("maybe", None),
        ("", None),
        ("   ", None),
        ("yesterday", None),
        ("not sure", None),
        ("<pad>", None),
    ],
)
def test_normalize_yes_no(text: str, expected: str | None) -> None:
    assert normalize_yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("b)", "B"),
        ("[c]", "C"),
        ("B. blue", "B"),
        ("(B) blue", "B"),
        ("The answer is C.", "C"),
        ("answer: (a)", "A"),
        ("blue", "B"),
        ("Blue.", "B"),
        ("It is green.", "C"),
        ("dark blue", "D"),
        ("The square is dark blue.", "D"),
        ("a red one", "A"),  # "a" is an article here, the option text decides
        ("E", None),  # a letter outside the options
        ("red or green", None),  # two options named
        ("purple", None),
        ("", None),
    ],
)
def test_normalize_choice(text: str, expected: str | None) -> None:
    assert normalize_choice(text, COLOURS) == expected


def test_normalize_choice_needs_options() -> None:
    with pytest.raises(ValueError):
        normalize_choice("A", [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3.0),
        ("3.0", 3.0),
        (" 3. ", 3.0),
        ("-2.5", -2.5),
        ("1,000", 1000.0),
        ("three", 3.0),
        ("Three.", 3.0),
        ("twenty-one", 21.0),
        ("twenty one", 21.0),
        ("one hundred and two", 102.0),
        ("There are 2 circles.", 2.0),
        ("There are two circles, not 4.", 2.0),
        ("4 or five", 4.0),
        ("zero", 0.0),
        ("none", 0.0),
        ("none of them", None),
        ("several", None),
        ("", None),
        ("no", None),
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Red circle.", "red circle"),
        ("a cat", "cat"),
        ("CAT!!", "cat"),
        ("3.5 metres", "3.5 metres"),
        ("1,000", "1,000"),
        ("red, blue", "red blue"),
        ("well-known", "well known"),
        ("  ", ""),
    ],
)
def test_normalize_open(text: str, expected: str) -> None:
    assert normalize_open(text) == expected


@pytest.mark.parametrize(
    ("task", "prediction", "answer", "choices", "tolerance", "expected"),
    [
        ("yes_no", "Yes.", "yes", None, 0.0, True),
        ("yes_no", "no", "yes", None, 0.0, False),
        ("yes_no", "banana", "no", None, 0.0, False),
        ("multiple_choice", "(B)", "B", COLOURS, 0.0, True),
        ("multiple_choice", "blue", "B", COLOURS, 0.0, True),
        ("multiple_choice", "B", "blue", COLOURS, 0.0, True),
        ("multiple_choice", "A", "B", COLOURS, 0.0, False),
        ("number", "three", "3", None, 0.0, True),
        ("number", "3.0", "3", None, 0.0, True),
        ("number", "4", "3", None, 0.0, False),
        ("number", "3.4", "3", None, 0.5, True),
        ("number", "3.6", "3", None, 0.5, False),
        ("open", "The red circle.", "red circle", None, 0.0, True),
        ("open", "red square", "red circle", None, 0.0, False),
    ],
)
def test_is_correct(
    task: str, prediction: str, answer: str, choices: list[str] | None, tolerance: float, expected: bool
) -> None:
    assert is_correct(task, prediction, answer, choices, tolerance=tolerance) is expected


def test_is_correct_rejects_invalid_ground_truth() -> None:
    with pytest.raises(ValueError, match="ground-truth"):
        is_correct("yes_no", "yes", "perhaps")


@pytest.mark.parametrize(
    ("task", "text", "choices", "parsable"),
    [
        ("yes_no", "Yes, there is.", None, True),
        ("yes_no", "blue", None, False),
        ("multiple_choice", "(C)", COLOURS, True),
        ("multiple_choice", "yes", COLOURS, False),
        ("number", "five", None, True),
        ("number", "yes", None, False),
        ("open", "anything at all", None, True),
        ("open", "?!", None, False),
    ],
)
def test_parse_answer_format(task: str, text: str, choices: list[str] | None, parsable: bool) -> None:
    assert (parse_answer(task, text, choices) is not None) is parsable


def test_parse_answer_unknown_task() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        parse_answer("essay", "text")
