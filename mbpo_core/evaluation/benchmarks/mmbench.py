"""MMBench (Liu et al. 2023): single-choice questions over 20 ability categories, scored with
CircularEval - a question counts only when the model picks the right option under every rotation
of its options.

Files: the official TSV (`MMBench_DEV_EN.tsv`, ... as VLMEvalKit and OpenCompass distribute it):
columns `index`, `question`, `hint`, `A` .. `D` (an option may be empty; `E` read when present),
`answer` (a letter), `category`, `l2-category`, `image` (base64, or the index of the row whose image
it shares). The rotated copies of question `i` are the rows whose index is `i + k * 1_000_000`,
the options shifted and `answer` following them, as in the official release. `data` is the TSV;
`images` where the images decode to (tsv.py; default `<stem>_images/` beside it).

Prompt: LMMS-Eval's mmbench task (`en_utils.mmbench_doc_to_text`): "<hint> <question> There are
several options:\\nA. ...\\nB. ..." (without the hint when it is empty), then "\\nAnswer with the
option's letter from the given choices directly."

Scoring: the official matching, VLMEvalKit's `can_infer` (vlmeval/utils/matching_util.py) under its
`exact_matching` policy (no judge model): in the answer, `.()[],:;!*#{}` become spaces and it is
split on whitespace; exactly one option letter among the words is the choice; otherwise a stock
refusal sentence or a lone "Z" is "no option"; otherwise the option whose text (lower-cased) is in
the answer, when exactly one is; otherwise nothing matched (wrong). CircularEval
(`mcq_circular_eval`): a question is right when every row of its group (same index modulo 10^6)
is; `circular_accuracy` per category and over all questions. `vanilla_accuracy`: the original row
(index < 10^6) alone, each question once. `unmatched`: the share of rows whose answer matched no
option. Difference: where the exact match fails, VLMEvalKit and LMMS-Eval may ask a GPT judge to
map the answer to an option; here such an answer is wrong, as VLMEvalKit's exact-matching mode
scores it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError, BenchmarkItem, MetricTables, ratio
from mbpo_core.evaluation.benchmarks.tsv import check_answer, letter_options, present, read_table

NAME = "mmbench"
MAX_NEW_TOKENS = 16
LETTERS = "ABCDE"
CIRCULAR = 1_000_000  # a rotated copy's index is its question's index plus a multiple of this
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
NO_OPTION = "Z"
# VLMEvalKit's refusals, read as "no option".
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def prompt(question: str, hint: str | None, options: Mapping[str, str]) -> str:
    listed = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    body = f"{question} There are several options:\n{listed}"
    return f"{hint} {body}{POST_PROMPT}" if hint else f"{body}{POST_PROMPT}"


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every row, in file order; ids are the rows' indexes."""
    table = read_table(data, images, ("question", "answer", "A", "B"))
    indexes = {row.index for row in table.rows}
    items = []
    for row in table.rows:
        fields = row.fields
        if row.index >= CIRCULAR and row.index % CIRCULAR not in indexes:
            raise BenchmarkDataError(
                data,
                f"rotated question {row.index} has no original row {row.index % CIRCULAR}",
                line=row.line,
            )
        options = letter_options(fields, LETTERS)
        answer = check_answer(data, row.line, fields["answer"], options)
        hint = fields.get("hint") if present(fields.get("hint")) else None
        l2 = fields.get("l2-category") or fields.get("l2_category") or ""
        items.append(
            BenchmarkItem(
                id=str(row.index),
                image=table.image(row),
                prompt=prompt(fields["question"], hint, options),
                meta={
                    "index": row.index,
                    "category": fields.get("category", "").strip() or "uncategorized",
                    "l2_category": l2.strip() or "uncategorized",
                    "truth": answer,
                    "options": options,
                },
            )
        )
    return items


def infer_letter(answer: str, letters: Sequence[str]) -> str | None:
    """VLMEvalKit's `can_infer_option`: the one option letter among the answer's words, "Z" for a
    refusal, else None."""
    if any(refusal in answer for refusal in REFUSALS):
        return NO_OPTION
    for char in ".()[],:;!*#{}":
        answer = answer.replace(char, " ")
    words = answer.split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1:
        return named[0]
    if not named and NO_OPTION in words:
        return NO_OPTION
    return None


def infer_text(answer: str, options: Mapping[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: the one option whose text is in the answer (any case)."""
    answer = answer.lower()
    named = [letter for letter, text in options.items() if text.lower() in answer]
    return named[0] if len(named) == 1 else None


def choice(answer: str, options: Mapping[str, str]) -> str | None:
    """The option `answer` picks (VLMEvalKit's `can_infer`), "Z" for none, None when unmatched."""
    return infer_letter(answer, list(options)) or infer_text(answer, options)


def _accuracies(groups: Sequence[list[bool]]) -> dict[str, float]:
    return {
        "n": len(groups),
        "circular_accuracy": ratio(sum(all(g) for g in groups), len(groups)),
        "vanilla_accuracy": ratio(sum(g[0] for g in groups), len(groups)),
    }


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    """One row per category (sorted) and "all": n (questions), circular_accuracy and
    vanilla_accuracy; "all" also `unmatched`. A question's group is its original row and the
    rotations among `items` (a rotation whose original is not among them is left out, as in
    VLMEvalKit, which builds groups from the original rows)."""
    right: dict[int, list[bool]] = {}  # question index -> right or not, original row first
    category: dict[int, str] = {}
    unmatched = 0
    rows = sorted(zip(items, answers, strict=True), key=lambda pair: int(pair[0].meta["index"]))
    for item, answer in rows:
        index = int(item.meta["index"])
        picked = choice(answer, item.meta["options"])
        unmatched += picked is None
        if index < CIRCULAR:
            category[index] = str(item.meta["category"])
            right[index] = [picked == item.meta["truth"]]
        elif index % CIRCULAR in right:
            right[index % CIRCULAR].append(picked == item.meta["truth"])
    tables: MetricTables = {}
    for name in sorted(set(category.values())):
        tables[name] = _accuracies([right[i] for i in right if category[i] == name])
    tables["all"] = {**_accuracies(list(right.values())), "unmatched": ratio(unmatched, len(rows))}
    return tables
