"""MMHal-Bench (Sun et al. 2023, LLaVA-RLHF): 96 open questions over OpenImages pictures in 8 types
(attribute, adversarial, comparison, counting, relation, environment, holistic, other), rated by a
judge model against a human answer and the image's labelled contents.

Files: the release's `response_template.json`, a JSON list of
    {"question_type": "attribute", "question_topic": "...", "image_id": "...",
     "image_src": "https://.../xyz_o.jpg", "image_content": ["Tree", "Plant"],
     "question": "...", "gt_answer": "...", "model_answer": ""}
and its images. `data` is that file; `images` the folder of the images (default: `images/` beside
the file), where an entry's image is its `image_path` when it has one, else the last part of its
`image_src` (a URL or a path).

Prompt: the question as written (the release's `get_response.py`).

Scoring, as the release's `eval_gpt4.py`: the judge model gets the official prompt
(`mmhal_judge_prompt.txt`: the image contents joined by ", ", the question, the human answer, the
model's answer) as one user message at temperature 0; the rating is the one s in 0..6 with
"rating: s" in the lower-cased reply, and 0 when there are none or several (`unparsed` counts
those). `average_score` = mean rating, `hallucination_rate` = share of ratings below 3, for all
questions and per `question_type`. Differences: the reference groups types by position (question
i is type i mod 8, which holds for the release's order), here by each entry's `question_type`; it
retries a failing judge forever, here judge.py retries a bounded number of times and then stops
with an error. The judge is required: `score` refuses without one (the CLI checks it before any
generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from mbpo_core.evaluation.benchmarks.common import (
    BenchmarkDataError,
    BenchmarkItem,
    MetricTables,
    field_of,
    image_path,
    ratio,
    read_json,
    require_list,
)

if TYPE_CHECKING:
    from mbpo_core.evaluation.benchmarks.judge import Judge

NAME = "mmhal"
MAX_NEW_TOKENS = 512
RATINGS = range(7)
HALLUCINATION_BELOW = 3  # ratings 0-2 say "with hallucination"


class JudgeRequiredError(ValueError):
    """MMHal-Bench cannot be scored without a judge model."""


@cache
def judge_template() -> str:
    return resources.files(__package__).joinpath("mmhal_judge_prompt.txt").read_text(encoding="utf-8")


def _image_name(record: dict, path: Path, entry: int) -> str:
    if "image_path" in record:
        return str(field_of(path, record, "image_path", str, entry=entry))
    source = field_of(path, record, "image_src", str, entry=entry)
    name = PurePosixPath(urlparse(source).path).name
    if not name:
        raise BenchmarkDataError(path, f"image_src {source!r} names no file", entry=entry)
    return name


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every entry of the template, in order; ids are the 0-based entry positions."""
    records = require_list(data, read_json(data))
    folder = images or data.parent / "images"
    items = []
    for entry, record in enumerate(records):
        if not isinstance(record, dict):
            raise BenchmarkDataError(data, "expected a JSON object", entry=entry)
        contents = field_of(data, record, "image_content", list, entry=entry)
        if not all(isinstance(c, str) for c in contents):
            raise BenchmarkDataError(data, "image_content must be a list of strings", entry=entry)
        items.append(
            BenchmarkItem(
                id=str(entry),
                image=image_path(folder, _image_name(record, data, entry), data, entry=entry),
                prompt=field_of(data, record, "question", str, entry=entry),
                meta={
                    "question_type": field_of(data, record, "question_type", str, entry=entry),
                    "gt_answer": field_of(data, record, "gt_answer", str, entry=entry),
                    "image_content": contents,
                },
            )
        )
    if not items:
        raise BenchmarkDataError(data, "no questions in the template")
    return items


def judge_prompt(item: BenchmarkItem, answer: str) -> str:
    return judge_template().format(
        ", ".join(item.meta["image_content"]), item.prompt, item.meta["gt_answer"], answer
    )


def rating(review: str) -> int | None:
    """The one rating 0..6 the review states ("rating: s", any case), None if none or several."""
    found = [s for s in RATINGS if f"rating: {s}" in review.lower()]
    return found[0] if len(found) == 1 else None


def metrics(ratings: Sequence[int | None]) -> dict[str, float]:
    """n, average_score, hallucination_rate (an unparsed rating counts 0, as in eval_gpt4.py),
    unparsed."""
    scores = [r if r is not None else 0 for r in ratings]
    return {
        "n": len(scores),
        "average_score": ratio(sum(scores), len(scores)),
        "hallucination_rate": ratio(sum(s < HALLUCINATION_BELOW for s in scores), len(scores)),
        "unparsed": ratio(sum(r is None for r in ratings), len(ratings)),
    }


def score(
    items: Sequence[BenchmarkItem], answers: Sequence[str], *, judge: Judge | None = None
) -> MetricTables:
    """Each answer rated by `judge` (prompt -> reply); one row per question_type (first-seen
    order) and "all"."""
    if judge is None:
        raise JudgeRequiredError(
            "MMHal-Bench is scored by a judge model: configure one (mbpo eval benchmark --judge-url "
            "URL --judge-model NAME)"
        )
    by_type: dict[str, list[int | None]] = {}
    every = []
    for item, answer in zip(items, answers, strict=True):
        value = rating(judge(judge_prompt(item, answer)))
        by_type.setdefault(str(item.meta["question_type"]), []).append(value)
        every.append(value)
    tables = {name: metrics(values) for name, values in by_type.items()}
    tables["all"] = metrics(every)
    return tables
