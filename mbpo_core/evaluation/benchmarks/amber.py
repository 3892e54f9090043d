"""AMBER (Wang et al. 2023): generative (describe the image) and discriminative (yes/no on existence,
attribute and relation) hallucination queries over its own images.

Files, as the AMBER repository lays them out (the user's local copy):
    data/annotations.json          [{"id": 1, "type": "generative", "truth": [...], "hallu": [...]},
                                    {"id": 1005, "type": "discriminative-hallucination", "truth": "no"}, ...]
    data/relation.json             word association: object -> related words
    data/safe_words.txt            words never counted as hallucinations, one a line
    data/query/query_generative.json, query_discriminative*.json, query_all.json
                                   [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."}, ...]
`data` is the `data/` directory (queries: query_generative.json and query_discriminative.json) or
one query file in its `query/` folder; `images` is the directory of the AMBER_*.jpg images. A
query's annotation is the entry at position id - 1, as in the reference.

Prompt: the query itself.

Scoring, as AMBER's `inference.py`:
- generative: the response's nouns that are AMBER words (relation.json's keys and values), minus
  safe words; a noun is safe when it is a truth object or associated with one (marking that truth
  object covered), otherwise hallucinated (and when it is a `hallu` object or associated with one,
  that object counts as hallucinated-and-mentioned). CHAIR = hallucinated / counted nouns (safe
  words counted, never hallucinated), Cover = covered truth objects / truth objects, Hal = share
  of responses with a hallucinated noun, Cog = mentioned hallu objects / hallu objects;
- discriminative: accuracy, and with "no" as the positive class precision = right "No" answers /
  "No" answers, recall = right "No" answers / questions whose truth is no, F1 from the rounded
  precision and recall (+0.0001 in the denominator); overall, existence, attribute (state, number,
  action) and relation;
- every figure in percent, rounded to one decimal, as the reference prints them.

Differences (offline, no NLTK or spaCy data): nouns are the tokens (letters, hyphens) that are
AMBER words after `chair.singular`-style singularisation - without NLTK's part-of-speech tagger, an
AMBER word used as a verb or adjective counts too; and the reference's second matching pass
(spaCy en_core_web_lg vector similarity > 0.8 against truth and hallu words) is not done - only
exact matches count, so a near-synonym the reference would accept as a truth object is a
hallucination here. Responses are compared as the reference compares them ("Yes" / "No") after
one normalisation: the leading word, without punctuation, in any case (the reference wants the
response to be exactly "Yes" or "No").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mbpo_core.evaluation.benchmarks.common import (
    BenchmarkDataError,
    BenchmarkItem,
    MetricTables,
    field_of,
    image_path,
    read_json,
    require_list,
)

NAME = "amber"
MAX_NEW_TOKENS = 512
DEFAULT_QUERIES = ("query_generative.json", "query_discriminative.json")
DIMENSIONS = {
    "existence": ("discriminative-hallucination",),
    "attribute": (
        "discriminative-attribute-state",
        "discriminative-attribute-number",
        "discriminative-attribute-action",
    ),
    "state": ("discriminative-attribute-state",),
    "number": ("discriminative-attribute-number",),
    "action": ("discriminative-attribute-action",),
    "relation": ("discriminative-relation",),
}
_TOKEN = re.compile(r"[a-z]+(?:-[a-z]+)*")


@dataclass(frozen=True)
class WordLists:
    """data/relation.json and data/safe_words.txt."""

    association: dict[str, list[str]]
    safe_words: frozenset[str]

    @property
    def words(self) -> frozenset[str]:
        """Every AMBER word: the association's keys and their values."""
        return frozenset(self.association) | {w for related in self.association.values() for w in related}


@cache
def _read_word_lists(data_dir: Path) -> WordLists:
    path = data_dir / "relation.json"
    association = read_json(path)
    if not isinstance(association, dict) or not all(
        isinstance(v, list) and all(isinstance(w, str) for w in v) for v in association.values()
    ):
        raise BenchmarkDataError(path, "expected an object: word -> list of related words")
    safe = data_dir / "safe_words.txt"
    try:
        lines = safe.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise BenchmarkDataError(safe, f"cannot read: {error.strerror or error}") from error
    return WordLists(association, frozenset(lines))


def word_lists(data_dir: Path) -> WordLists:
    return _read_word_lists(data_dir.resolve())


def _layout(data: Path) -> tuple[Path, list[Path]]:
    """(the data/ directory, the query files)."""
    if data.is_file():
        data_dir = data.parent.parent if data.parent.name == "query" else data.parent
        return data_dir, [data]
    if not data.is_dir():
        raise BenchmarkDataError(data, "no such file or directory")
    queries = [data / "query" / name for name in DEFAULT_QUERIES if (data / "query" / name).is_file()]
    if not queries:
        raise BenchmarkDataError(data, f"no query file ({', '.join(DEFAULT_QUERIES)}) under query/")
    return data, queries


def load(data: Path, images: Path | None = None) -> list[BenchmarkItem]:
    """Every query of the query file(s), with its annotation in `meta`."""
    if images is None:
        raise BenchmarkDataError(data, "AMBER needs the image directory (--images)")
    data_dir, query_files = _layout(data)
    annotations_path = data_dir / "annotations.json"
    annotations = require_list(annotations_path, read_json(annotations_path))
    word_lists(data_dir)  # fail early on missing or broken word lists
    items = []
    for path in query_files:
        for entry, query in enumerate(require_list(path, read_json(path))):
            if not isinstance(query, dict):
                raise BenchmarkDataError(path, "expected a query object", entry=entry)
            qid = field_of(path, query, "id", int, entry=entry)
            if not 1 <= qid <= len(annotations):
                raise BenchmarkDataError(
                    path,
                    f"id {qid} has no annotation ({annotations_path} has {len(annotations)})",
                    entry=entry,
                )
            annotation = annotations[qid - 1]
            kind = field_of(annotations_path, annotation, "type", str, entry=qid - 1)
            truth = field_of(annotations_path, annotation, "truth", (str, list), entry=qid - 1)
            meta: dict[str, Any] = {"id": qid, "type": kind, "truth": truth, "data_dir": str(data_dir)}
            if kind == "generative":
                meta["hallu"] = field_of(annotations_path, annotation, "hallu", list, entry=qid - 1)
            elif truth not in ("yes", "no"):
                raise BenchmarkDataError(
                    annotations_path, f"truth of a {kind} query must be yes or no", entry=qid - 1
                )
            items.append(
                BenchmarkItem(
                    id=str(qid),
                    image=image_path(
                        images, field_of(path, query, "image", str, entry=entry), path, entry=entry
                    ),
                    prompt=field_of(path, query, "query", str, entry=entry),
                    meta=meta,
                )
            )
    return items


def singular(word: str, vocabulary: frozenset[str]) -> str:
    """`word`, or its singular when that is an AMBER word and the word is not."""
    if word in vocabulary:
        return word
    candidates = []
    if word.endswith("ies"):
        candidates.append(word[:-3] + "y")
    if word.endswith("ves"):
        candidates += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        candidates.append(word[:-2])
    if word.endswith("s"):
        candidates.append(word[:-1])
    return next((c for c in candidates if c in vocabulary), word)


def response_nouns(response: str, lists: WordLists) -> list[str]:
    """The AMBER words of a response, in order (module docstring: tokens, not tagged nouns)."""
    vocabulary = lists.words
    return [w for w in (singular(t, vocabulary) for t in _TOKEN.findall(response.lower())) if w in vocabulary]


def _first_match(noun: str, objects: Sequence[str], association: dict[str, list[str]]) -> int | None:
    """Index of the object `noun` marks, as the reference's flattened search finds it: first every
    object's associated words in order, then the objects themselves."""
    for index, obj in enumerate(objects):
        if noun in association.get(obj, ()):
            return index
    return objects.index(noun) if noun in objects else None


@dataclass
class GenerativeCounts:
    counted: int = 0  # nouns counted for CHAIR
    hallucinated: int = 0
    truth: int = 0
    covered: int = 0
    hallu: int = 0
    hallu_mentioned: int = 0
    responses: int = 0
    clean_responses: int = 0

    def add(self, response: str, truth: Sequence[str], hallu: Sequence[str], lists: WordLists) -> None:
        covered: set[int] = set()
        mentioned: set[int] = set()
        wrong = 0
        nouns = response_nouns(response, lists)
        for noun in nouns:
            if noun in lists.safe_words:
                continue
            if (t := _first_match(noun, truth, lists.association)) is not None:
                covered.add(t)
                continue
            if (h := _first_match(noun, hallu, lists.association)) is not None:
                mentioned.add(h)
            wrong += 1
        self.counted += len(nouns)
        self.hallucinated += wrong
        self.truth += len(truth)
        self.covered += len(covered)
        self.hallu += len(hallu)
        self.hallu_mentioned += len(mentioned)
        self.responses += 1
        self.clean_responses += wrong == 0


def _pct(num: float, den: float) -> float:
    return round(num / den * 100, 1) if den else 0.0


def normalise(response: str) -> str:
    """ "Yes" / "No" when the response's leading word is yes / no in any case, else the response."""
    words = response.strip().split()
    first = re.sub(r"[^a-z]", "", words[0].lower()) if words else ""
    return {"yes": "Yes", "no": "No"}.get(first, response)


def discriminative_metrics(truths: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    pairs = [(t, normalise(r)) for t, r in zip(truths, responses, strict=True)]
    correct = sum((t == "yes" and r == "Yes") or (t == "no" and r == "No") for t, r in pairs)
    answered_no = sum(r == "No" for _, r in pairs)
    truth_no = sum(t == "no" for t, _ in pairs)
    right_no = sum(t == "no" and r == "No" for t, r in pairs)
    precision, recall = _pct(right_no, answered_no), _pct(right_no, truth_no)
    f1 = round(2 * (precision / 100) * (recall / 100) / (precision / 100 + recall / 100 + 0.0001) * 100, 1)
    return {
        "n": len(pairs),
        "accuracy": _pct(correct, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def score(items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables:
    """ "generative" (chair, cover, hal, cog) and "discriminative" plus one row per dimension, for
    the query types present."""
    tables: MetricTables = {}
    generative = GenerativeCounts()
    discriminative: list[tuple[str, str, str]] = []  # (type, truth, response)
    for item, answer in zip(items, answers, strict=True):
        meta = item.meta
        if meta["type"] == "generative":
            lists = word_lists(Path(meta["data_dir"]))
            generative.add(answer, list(meta["truth"]), list(meta["hallu"]), lists)
        else:
            discriminative.append((str(meta["type"]), str(meta["truth"]), answer))
    if generative.responses:
        g = generative
        tables["generative"] = {
            "n": g.responses,
            "chair": _pct(g.hallucinated, g.counted),
            "cover": _pct(g.covered, g.truth),
            "hal": round(100 - g.clean_responses / g.responses * 100, 1),
            "cog": _pct(g.hallu_mentioned, g.hallu),
        }
    if discriminative:
        tables["discriminative"] = discriminative_metrics(
            [t for _, t, _ in discriminative], [r for _, _, r in discriminative]
        )
        for dimension, types in DIMENSIONS.items():
            rows = [(t, r) for kind, t, r in discriminative if kind in types]
            if rows:
                tables[dimension] = discriminative_metrics([t for t, _ in rows], [r for _, r in rows])
    return tables
