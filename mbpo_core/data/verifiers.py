"""Answer verifiers: normalise a free-text answer per task type and check it against the truth.

Pure functions, no torch. Rewards (docs/method.md §4), mining (§3: "is the decoded answer wrong?")
and evaluation (§6) all decide correctness here, so one answer is judged the same way everywhere.

Task types (the manifest's `task` field, docs/api.md):
- `yes_no`:          "Yes.", "yes, there is" -> "yes"; "No" -> "no".
- `multiple_choice`: "(B)", "B.", "b", "Answer: B" or the option text "blue" -> "B".
- `number`:          "3", "3.0", "three", "twenty-one", "There are 2 circles." -> float.
- `open`:            case, punctuation, whitespace and articles removed.

`parse_answer(task, text, choices)` returns the normalised answer or None when the text does not
have the requested form; "parsable" (the format reward) means "not None".
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Literal, get_args

Task = Literal["yes_no", "multiple_choice", "number", "open"]
TASKS: tuple[str, ...] = get_args(Task)
# Tasks with a programmatic verifier: online GRPO prompts need one of these.
CLOSED_TASKS = frozenset({"yes_no", "multiple_choice", "number"})

ParsedAnswer = str | float

_YES = frozenset({"yes", "yeah", "yep", "yup", "true", "correct"})
_NO = frozenset({"no", "nope", "false", "incorrect"})

_WORD = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalize_yes_no(text: str) -> Literal["yes", "no"] | None:
    """'yes' / 'no' / None. The first word decides ("Yes, there is no doubt" is yes); otherwise the
    answer must contain words of exactly one polarity ("I think so... yes" -> yes,
    "maybe yes, maybe no" -> None)."""
    words = _words(text)
    if not words:
        return None
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    has_yes = any(w in _YES for w in words)
    has_no = any(w in _NO for w in words)
    if has_yes == has_no:
        return None
    return "yes" if has_yes else "no"


def choice_letter(index: int) -> str:
    """The letter of the `index`-th option: 0 -> 'A'."""
    if not 0 <= index < 26:
        raise ValueError(f"option index {index} out of range A-Z")
    return string.ascii_uppercase[index]


# A bare letter, possibly bracketed or followed by '.', ')' or ':' ("b", "(B)", "B.", "B)").
_BARE_LETTER = re.compile(r"^\s*[\(\[]?([A-Za-z])[\)\]]?[.:)]?\s*$")
# A marked letter at the start followed by more text ("B. blue", "(B) blue", "B) blue", "B: blue").
# A bare "a blue" is NOT a letter: "a" is an article, so a marker is required.
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])[.:)])\s+\S")
# "The answer is B", "answer: (c)", "option B".
_NAMED_LETTER = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|:)?\s*[\(\[]?([A-Za-z])[\)\]]?(?![A-Za-z])", re.IGNORECASE
)


def normalize_choice(text: str, choices: Sequence[str]) -> str | None:
    """The letter ('A', 'B', ...) of the option `text` names, or None when it names none or several.

    Accepted forms, first match wins: the option text itself ("blue"); a bare letter ("b", "(B)",
    "B."); a marked letter before more text ("B. blue"); "the answer is B"; an answer mentioning
    exactly one option's text as whole words ("It is blue.")."""
    if not choices:
        raise ValueError("normalize_choice needs the list of options")
    letters = [choice_letter(i) for i in range(len(choices))]
    options = [normalize_open(c) for c in choices]
    normalized = normalize_open(text)
    if normalized and normalized in options:
        return letters[options.index(normalized)]
    for pattern in (_BARE_LETTER, _LEADING_LETTER, _NAMED_LETTER):
        match = pattern.search(text)
        if match:
            letter = next(g for g in match.groups() if g).upper()
            return letter if letter in letters else None
    return _single_mentioned_option(normalized, options, letters)


def _single_mentioned_option(normalized: str, options: list[str], letters: list[str]) -> str | None:
    padded = f" {normalized} "
    mentioned = [i for i, opt in enumerate(options) if opt and f" {opt} " in padded]
    # "dark blue" mentions both "blue" and "dark blue": the longer option is the one meant.
    mentioned = [i for i in mentioned if not any(i != j and options[i] in options[j] for j in mentioned)]
    return letters[mentioned[0]] if len(mentioned) == 1 else None


_UNIT_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TEN_WORDS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = {w: i for i, w in enumerate(_UNIT_WORDS)}
_TENS = {w: 10 * i for i, w in enumerate(_TEN_WORDS, start=2)}
_SCALES = {"hundred": 100, "thousand": 1000}
# A signed decimal with optional thousands separators: "-3", "1,000", "2.5".
_DIGITS = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])-?\d+(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The first number in `text`, written in digits ("3", "-2.5", "1,000") or words ("three",
    "twenty-one", "one hundred and two"), or None. A lone "none" counts as 0."""
    lowered = text.lower()
    digit_match = _DIGITS.search(lowered)
    words = re.findall(r"[a-z]+", lowered.replace("-", " "))
    word_value, word_start = _first_number_words(words, lowered)
    if digit_match and (word_value is None or digit_match.start() <= word_start):
        return float(digit_match.group().replace(",", ""))
    if word_value is not None:
        return float(word_value)
    # "none" is zero only as the whole answer; inside a sentence it rarely is the count.
    return 0.0 if words == ["none"] else None


def _first_number_words(words: list[str], lowered: str) -> tuple[int | None, int]:
    """Value of the first run of number words and its character position in `lowered`."""
    for start, word in enumerate(words):
        if word in _UNITS or word in _TENS:
            value = _number_word_run(words[start:])
            position = re.search(rf"\b{word}\b", lowered)
            return value, position.start() if position else len(lowered)
    return None, len(lowered)


def _number_word_run(words: list[str]) -> int:
    total, current = 0, 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word in _SCALES:
            scale = _SCALES[word]
            if scale == 100:
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * scale
                current = 0
        elif word != "and":
            break
    return total + current


_ARTICLES = frozenset({"a", "an", "the"})
# Punctuation, except a '.' or ',' between two digits, so "3.5" and "1,000" survive.
_PUNCT = re.compile(r"(?<!\d)[.,]|[.,](?!\d)|[^\w\s.,]|_")


def normalize_open(text: str) -> str:
    """Lower case, punctuation removed, articles dropped, whitespace collapsed: 'The  Red circle.' ->
    'red circle'. Articles go (as in the VQA metric) so "a cat" and "cat" are the same answer."""
    cleaned = _PUNCT.sub(" ", text.lower())
    return " ".join(w for w in cleaned.split() if w not in _ARTICLES)


def parse_answer(task: str, text: str, choices: Sequence[str] | None = None) -> ParsedAnswer | None:
    """The normalised answer in the form `task` asks for, or None when `text` lacks that form."""
    if task == "yes_no":
        return normalize_yes_no(text)
    if task == "multiple_choice":
        if not choices:
            raise ValueError("multiple_choice answers need their choices")
        return normalize_choice(text, choices)
    if task == "number":
        return parse_number(text)
    if task == "open":
        return normalize_open(text) or None
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def is_correct(
    task: str,
    prediction: str,
    answer: str,
    choices: Sequence[str] | None = None,
    tolerance: float = 0.0,
) -> bool:
    """Whether `prediction` means the same as the ground truth `answer` (both normalised the same way).

    `tolerance` is the absolute slack for numbers (0 = equal up to float rounding). An unparsable
    prediction is wrong; an unparsable ground truth is a data error and raises."""
    truth = parse_answer(task, answer, choices)
    if truth is None:
        raise ValueError(f"ground-truth answer {answer!r} is not a valid {task} answer")
    predicted = parse_answer(task, prediction, choices)
    if predicted is None:
        return False
    if task == "number":
        assert isinstance(predicted, float) and isinstance(truth, float)
        return math.isclose(predicted, truth, rel_tol=0.0, abs_tol=max(tolerance, 1e-9))
    return predicted == truth
