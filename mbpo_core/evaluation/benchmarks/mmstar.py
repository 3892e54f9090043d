"""MMStar (Chen et al. 2024): 1,500 single-choice questions that need the image, in 6 core
capabilities (`category`) of 3 axes each (`l2_category`).

Files: the TSV as VLMEvalKit distributes it (`MMStar.tsv`): columns `index`, `question` (the options
inside it: "...\\nOptions: A: ..., B: ..., C: ..., D: ..."), `answer` (a letter), `category`,
`l2_category` (or `l2-category`), `image` (base64). Option columns `A` .. `D`, when present, name
the options instead of the question text. `data` is the TSV; `images` where the images decode to
(tsv.py; default `<stem>_images/` beside it).

Prompt: LMMS-Eval's mmstar task (`mmstar_doc_to_text`, default kwargs): the question stripped, then
"\\nAnswer with the option's letter from the given choices directly" (no final full stop, as there).

Scoring: MMStar's `exact_match`, as LMMS-Eval carries it: answer and truth lower-cased, stripped,
new lines as spaces; right when the answer's first character is the letter, or it starts "(" and
then the letter, or "option " then the letter, or "the answer is " then the letter. Aggregation as
LMMS-Eval's `mmstar_aggregate_results`: a category's `accuracy` is the mean of its axes' accuracies,
"all" the mean over every axis. `question_accuracy` is the plain share of questions right (how
VLMEvalKit reports MMStar); the two differ only when axes have different sizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, BenchmarkItem, MetricTables, ratio
from mbpo_core.evaluation.benchmarks.tsv import check_answer, letter_options, read_table

NAME = "mmstar"
MAX_NEW_TOKENS = 16
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly"
# LMMS-Eval drops this from a question before adding its own instruction.
YES_NO_PROMPT = " Please answer yes or no."
# "Options: A: text, B: text" - a letter after the start or a comma/space, then a colon.
OPTION_LABEL = re.compile(r"(?:^|[\s,])([A-Z]):")


def prompt(question: str) -> str:
    return f"{question.strip().replace(YES_NO_PROMPT, '')}{POST_PROMPT}"


def question_options(question: str) -> list[str]:
    """The option letters listed after the question's last "Options:", in order."""
    _, marker, listed = question.rpartition("Options:")
    return list(dict.fromkeys(OPTION_LABEL.findall(listed))) if marker else []


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every row, in file order; ids are the rows' indexes."""
    table = read_table(data, images, ("question", "answer", "category"))
    items = []
    for row in table.rows:
        fields = row.fields
        letters = list(letter_options(fields, "ABCD")) or question_options(fields["question"])
        if not letters:
            raise BenchmarkDataError(
                data, "no options: expected 'Options: A: ..., B: ...' in the question", line=row.line
            )
        answer = check_answer(data, row.line, fields["answer"], dict.fromkeys(letters, ""))
        l2 = fields.get("l2_category") or fields.get("l2-category") or ""
        items.append(
            BenchmarkItem(
                id=str(row.index),
                image=table.image(row),
                prompt=prompt(fields["question"]),
                meta={
                    "index": row.index,
                    "category": fields["category"].strip(),
                    "l2_category": l2.strip() or fields["category"].strip(),
                    "truth": answer,
                },
            )
        )
    return items


def exact_match(answer: str, truth: str) -> bool:
    """MMStar's exact_match (see the module docstring); slices where the reference indexes and
    catches the IndexError, with the same outcome."""
    truth = truth.lower().strip().replace("\n", " ")
    answer = answer.lower().strip().replace("\n", " ")
    return (
        answer[:1] == truth
        or (answer[:1] == "(" and answer[1:2] == truth)
        or (answer[:7] == "option " and answer[7:8] == truth)
        or (answer[:14] == "the answer is " and answer[14:15] == truth)
    )


def _row(scores: Sequence[tuple[str, bool]]) -> dict[str, float]:
    """n, accuracy (mean over the axes of each axis's accuracy) and question_accuracy."""
    by_axis: dict[str, list[bool]] = {}
    for axis, right in scores:
        by_axis.setdefault(axis, []).append(right)
    axis_means = [sum(v) / len(v) for v in by_axis.values()]
    return {
        "n": len(scores),
        "accuracy": ratio(sum(axis_means), len(axis_means)),
        "question_accuracy": ratio(sum(right for _, right in scores), len(scores)),
    }


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    """One row per category (in first-seen order) and "all"."""
    by_category: dict[str, list[tuple[str, bool]]] = {}
    for item, answer in zip(items, answers, strict=True):
        right = exact_match(answer, str(item.meta["truth"]))
        by_category.setdefault(str(item.meta["category"]), []).append((str(item.meta["l2_category"]), right))
    tables = {category: _row(scores) for category, scores in by_category.items()}
    tables["all"] = _row([s for scores in by_category.values() for s in scores])
    return tables
