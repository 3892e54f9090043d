"""The dataset manifest (docs/api.md, "Dataset manifest"): one JSON object per line, images beside it.

    {"id": "s1", "image": "images/s1.png", "question": "Is there a fork?", "answer": "no",
     "task": "yes_no"}
    {"id": "s2", "image": "images/s2.png", "question": "Which colour is the circle?", "answer": "B",
     "task": "multiple_choice", "choices": ["red", "blue", "green"]}

Everything that reads a manifest goes through this module: the service's validation job, mining,
training and evaluation. It is deliberately strict about the parts that can hurt (paths that leave
the dataset directory, images that decompress into gigabytes) and names the line and the field of
every problem, so a user can fix a 100 000-line file from the report alone. Torch-free.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image

from mbpo_core.data.verifiers import TASKS, parse_answer

# A manifest line longer than this is almost certainly not a sample (a pasted blob, a binary file).
MAX_LINE_BYTES = 64 * 1024
_KNOWN_FIELDS = frozenset({"id", "image", "question", "answer", "task", "choices"})


class ManifestError(ValueError):
    """One problem in a manifest, with its place. `code` is stable (reports and tests rely on it)."""

    def __init__(self, code: str, message: str, *, line: int | None = None, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class ManifestSample:
    """One validated manifest line. `image` is the relative path as written in the manifest."""

    id: str
    image: str
    question: str
    answer: str
    task: str
    choices: tuple[str, ...] = ()
    line: int = 0
    # Extra keys of the line (e.g. "split", "objects"), kept verbatim for tools that use them.
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    mode: str
    size_bytes: int


def _require_str(obj: dict[str, Any], name: str, line: int, *, allow_empty: bool = False) -> str:
    if name not in obj:
        raise ManifestError("missing_field", f"missing field {name!r}", line=line, field=name)
    value = obj[name]
    if not isinstance(value, str):
        raise ManifestError("wrong_type", f"field {name!r} must be a string", line=line, field=name)
    if not allow_empty and not value.strip():
        raise ManifestError("empty_field", f"field {name!r} is empty", line=line, field=name)
    return value


def _parse_choices(obj: dict[str, Any], task: str, line: int) -> tuple[str, ...]:
    raw = obj.get("choices")
    if task != "multiple_choice":
        if raw not in (None, []):
            raise ManifestError(
                "unexpected_field",
                f"'choices' is only for multiple_choice, not {task}",
                line=line,
                field="choices",
            )
        return ()
    if raw is None:
        raise ManifestError("missing_field", "multiple_choice needs 'choices'", line=line, field="choices")
    if not isinstance(raw, list) or not all(isinstance(c, str) and c.strip() for c in raw):
        raise ManifestError(
            "wrong_type", "'choices' must be a list of non-empty strings", line=line, field="choices"
        )
    if not 2 <= len(raw) <= 26:
        raise ManifestError(
            "bad_choices", "'choices' needs between 2 and 26 options", line=line, field="choices"
        )
    if len({c.strip().lower() for c in raw}) != len(raw):
        raise ManifestError("bad_choices", "'choices' has duplicate options", line=line, field="choices")
    return tuple(raw)


def check_image_reference(ref: str, *, line: int | None = None) -> str:
    """Refuse image references that are not plain relative paths inside the dataset directory."""
    if "\x00" in ref:
        raise ManifestError("unsafe_path", "image path contains a NUL byte", line=line, field="image")
    if ref.startswith(("/", "\\")) or PureWindowsPath(ref).drive or PureWindowsPath(ref).is_absolute():
        raise ManifestError("unsafe_path", f"image path {ref!r} is absolute", line=line, field="image")
    parts = PurePosixPath(ref.replace("\\", "/")).parts
    if ".." in parts:
        raise ManifestError(
            "unsafe_path", f"image path {ref!r} leaves the dataset directory", line=line, field="image"
        )
    return ref


def parse_line(text: str | bytes, line: int) -> ManifestSample:
    """Parse and check one manifest line (1-based `line` is only used in errors)."""
    if len(text) > MAX_LINE_BYTES:
        raise ManifestError("line_too_long", f"line longer than {MAX_LINE_BYTES} bytes", line=line)
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError as exc:
        raise ManifestError(
            "invalid_json", f"not valid JSON: {exc.msg} at column {exc.colno}", line=line
        ) from exc
    except UnicodeDecodeError as exc:
        raise ManifestError("invalid_json", f"not UTF-8 text: {exc.reason}", line=line) from exc
    if not isinstance(obj, dict):
        raise ManifestError("invalid_json", "a line must be a JSON object", line=line)
    sample_id = _require_str(obj, "id", line)
    image = check_image_reference(_require_str(obj, "image", line), line=line)
    question = _require_str(obj, "question", line)
    answer = _require_str(obj, "answer", line)
    task = _require_str(obj, "task", line)
    if task not in TASKS:
        raise ManifestError(
            "unknown_task",
            f"unknown task {task!r}; expected one of {', '.join(TASKS)}",
            line=line,
            field="task",
        )
    choices = _parse_choices(obj, task, line)
    if parse_answer(task, answer, choices) is None:
        raise ManifestError(
            "bad_answer", f"answer {answer!r} is not a valid {task} answer", line=line, field="answer"
        )
    meta = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS}
    return ManifestSample(
        id=sample_id,
        image=image,
        question=question,
        answer=answer,
        task=task,
        choices=choices,
        line=line,
        meta=meta,
    )


def iter_manifest(path: str | Path) -> Iterator[tuple[int, ManifestSample | ManifestError]]:
    """Yield `(line_number, sample or error)` for every non-blank line; duplicate ids are errors."""
    seen: set[str] = set()
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                sample = parse_line(raw, number)
            except ManifestError as exc:
                yield number, exc
                continue
            if sample.id in seen:
                yield (
                    number,
                    ManifestError("duplicate_id", f"duplicate id {sample.id!r}", line=number, field="id"),
                )
                continue
            seen.add(sample.id)
            yield number, sample


def read_manifest(path: str | Path) -> list[ManifestSample]:
    """All samples of a manifest, or the first problem as a ManifestError (for trusted datasets)."""
    samples = []
    for _, item in iter_manifest(path):
        if isinstance(item, ManifestError):
            raise item
        samples.append(item)
    return samples


def resolve_image_path(root: str | Path, ref: str, *, line: int | None = None) -> Path:
    """The real path of image `ref` under dataset directory `root`.

    Refuses `..`, absolute paths and symlinks (of the file or any parent) that lead outside `root`,
    and a missing file. The returned path is fully resolved, so later opens cannot be redirected."""
    check_image_reference(ref, line=line)
    base = Path(root).resolve(strict=True)
    candidate = base / ref.replace("\\", "/")
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError as exc:
        raise ManifestError("missing_image", f"image {ref!r} not found", line=line, field="image") from exc
    except (OSError, RuntimeError) as exc:  # symlink loops, permission problems
        raise ManifestError("unreadable_image", f"image {ref!r}: {exc}", line=line, field="image") from exc
    if not real.is_relative_to(base):
        raise ManifestError(
            "unsafe_path", f"image {ref!r} resolves outside the dataset directory", line=line, field="image"
        )
    if not real.is_file():
        raise ManifestError("missing_image", f"image {ref!r} is not a regular file", line=line, field="image")
    return real


def open_image_checked(
    path: str | Path, *, max_pixels: int, max_bytes: int, line: int | None = None
) -> tuple[Image.Image, ImageInfo]:
    """Open, verify and fully decode an image within the limits; returns the decoded RGB image.

    The byte limit is checked before opening and the pixel limit from the header before decoding,
    so a decompression bomb (a small file declaring a huge canvas) is never expanded."""
    p = Path(path)
    size = os.stat(p).st_size
    if size > max_bytes:
        raise ManifestError(
            "image_too_large", f"image is {size} bytes, limit {max_bytes}", line=line, field="image"
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns at half its global limit; our explicit check decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as probe:
                width, height = probe.size
                fmt = probe.format or "unknown"
                if width * height > max_pixels:
                    raise ManifestError(
                        "too_many_pixels",
                        f"image is {width}x{height} = {width * height} pixels, limit {max_pixels} "
                        "(decompression bomb guard)",
                        line=line,
                        field="image",
                    )
                probe.verify()
            # verify() leaves the file unusable and misses truncated pixel data: decode it for real.
            with Image.open(p) as img:
                img.load()
                mode = img.mode
                rgb = img.convert("RGB")
    except ManifestError:
        raise
    except Image.DecompressionBombError as exc:
        raise ManifestError("too_many_pixels", str(exc), line=line, field="image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ManifestError(
            "corrupt_image", f"image cannot be decoded: {exc}", line=line, field="image"
        ) from exc
    return rgb, ImageInfo(width=width, height=height, format=fmt, mode=mode, size_bytes=size)
