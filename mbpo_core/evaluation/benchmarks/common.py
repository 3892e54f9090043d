"""What every benchmark module shares: the item a model answers, the error that names a file and its
line (or its entry in a JSON list), the `Benchmark` interface and small readers.

A benchmark module holds a loader (the benchmark's official local files -> `BenchmarkItem`s, no
network) and a scorer (the items and the model's answers -> metric tables, as the benchmark's
reference code computes them). `runner.py` generates the answers. Torch-free.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Metric tables: a row name (a split, a subtask, "overall") -> metric name -> value.
MetricTables = dict[str, dict[str, float]]


class BenchmarkDataError(ValueError):
    """A problem in a benchmark's files, with the file and where in it: `line` for text and JSON
    lines files, `entry` (0-based index) for JSON lists."""

    def __init__(self, path: Path, message: str, *, line: int | None = None, entry: int | None = None):
        self.path = Path(path)
        self.line = line
        self.entry = entry
        self.message = message
        where = f", line {line}" if line is not None else f", entry {entry}" if entry is not None else ""
        super().__init__(f"{self.path}{where}: {message}")


@dataclass(frozen=True)
class BenchmarkItem:
    """One prompt to answer about one image. `meta` holds what the scorer needs (the truth, the
    split or subtask) and is written with the prediction."""

    id: str
    image: Path
    prompt: str
    meta: Mapping[str, Any] = field(default_factory=dict)


class Benchmark(Protocol):
    """A benchmark module (pope, chair, amber, mme, mmhal, mmbench, mmstar, ai2d) satisfies this.
    A scorer may take keyword options beyond these two arguments (mmhal's `judge`)."""

    NAME: str
    # Generation length the benchmark's answers need (yes/no: a few tokens; captions: many).
    MAX_NEW_TOKENS: int

    def load(self, data: Path, images: Path | None = None) -> list[BenchmarkItem]: ...

    def score(self, items: Sequence[BenchmarkItem], answers: Sequence[str]) -> MetricTables: ...


def scored_by_judge(benchmark: Any) -> bool:
    """Whether a benchmark's `score` needs a judge model (it takes a `judge` keyword argument)."""
    return "judge" in inspect.signature(benchmark.score).parameters


def read_json(path: Path) -> Any:
    """A JSON file; a syntax error names the file and its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise BenchmarkDataError(path, f"cannot read: {error.strerror or error}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BenchmarkDataError(path, f"invalid JSON: {error.msg}", line=error.lineno) from error


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a JSON-lines file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise BenchmarkDataError(path, f"cannot read: {error.strerror or error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkDataError(path, f"invalid JSON: {error.msg}", line=number) from error
        if not isinstance(value, dict):
            raise BenchmarkDataError(path, "expected a JSON object", line=number)
        yield number, value


def require_list(path: Path, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BenchmarkDataError(path, "expected a JSON list")
    return value


def field_of(
    path: Path, record: Mapping[str, Any], name: str, kind: type | tuple[type, ...], **where: int
) -> Any:
    """`record[name]`, which must exist and be of `kind`; otherwise an error naming the field."""
    if name not in record:
        raise BenchmarkDataError(path, f"missing field {name!r}", **where)
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):  # no benchmark field is a bool
        raise BenchmarkDataError(path, f"field {name!r} has the wrong type ({type(value).__name__})", **where)
    return value


def image_path(images: Path, name: str, source: Path, **where: int) -> Path:
    """`images / name`, which must be a file inside `images`."""
    path = (images / name).resolve()
    if not path.is_relative_to(images.resolve()):
        raise BenchmarkDataError(source, f"image {name!r} leaves the image directory", **where)
    if not path.is_file():
        raise BenchmarkDataError(source, f"image {name!r} not found in {images}", **where)
    return path


def ratio(num: float, den: float) -> float:
    return num / den if den else 0.0
