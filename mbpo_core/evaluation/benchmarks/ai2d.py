"""AI2D (Kembhavi et al. 2016): multiple-choice questions about grade-school science diagrams.

Files: the TSV as VLMEvalKit distributes it (`AI2D_TEST.tsv`): columns `index`, `question`, `A` ..
`D` (an option may be empty), `answer` (a letter), `image` (base64, or the index of the row whose
image it shares); `category`, when present, groups the metrics. `data` is the TSV; `images` where
the images decode to (tsv.py; default `<stem>_images/` beside it).

Prompt: LMMS-Eval's ai2d task, default `mcq` format (`ai2d_doc_to_text`): "<question>\\nA. ...\\nB.
..." then "\\nAnswer with the option's letter from the given choices directly."

Scoring: LMMS-Eval's ai2d metric, `exact_match` with `ignore_case` and `ignore_punctuation`: the
answer, lower-cased and without ASCII punctuation, must equal the truth letter so treated ("B" and
"(B)." are right, "B. a leaf" is not). `accuracy` per category and "all". Difference: the answer is
stripped of surrounding white space first (the runner's answers already are).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from mbpo_core.evaluation.benchmarks.common import BenchmarkItem, MetricTables, ratio
from mbpo_core.evaluation.benchmarks.tsv import check_answer, letter_options, read_table

NAME = "ai2d"
MAX_NEW_TOKENS = 16  # LMMS-Eval's ai2d generation_kwargs
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def prompt(question: str, options: Mapping[str, str]) -> str:
    listed = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return f"{question}\n{listed}{POST_PROMPT}"


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every row, in file order; ids are the rows' indexes."""
    table = read_table(data, images, ("question", "answer", "A", "B"))
    items = []
    for row in table.rows:
        options = letter_options(row.fields, "ABCD")
        answer = check_answer(data, row.line, row.fields["answer"], options)
        meta: dict[str, object] = {"index": row.index, "truth": answer}
        if row.fields.get("category", "").strip():
            meta["category"] = row.fields["category"].strip()
        items.append(
            BenchmarkItem(
                id=str(row.index),
                image=table.image(row),
                prompt=prompt(row.fields["question"], options),
                meta=meta,
            )
        )
    return items


def normalise(text: str) -> str:
    """LMMS-Eval's exact_match with ignore_case and ignore_punctuation (after a strip)."""
    return text.strip().lower().translate(_NO_PUNCTUATION)


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    """n and accuracy per category (first-seen order) when the file has categories, and "all"."""
    by_category: dict[str, list[bool]] = {}
    every: list[bool] = []
    for item, answer in zip(items, answers, strict=True):
        right = normalise(answer) == normalise(str(item.meta["truth"]))
        every.append(right)
        if "category" in item.meta:
            by_category.setdefault(str(item.meta["category"]), []).append(right)
    tables: MetricTables = {
        name: {"n": len(rights), "accuracy": ratio(sum(rights), len(rights))}
        for name, rights in by_category.items()
    }
    tables["all"] = {"n": len(every), "accuracy": ratio(sum(every), len(every))}
    return tables
