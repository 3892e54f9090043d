"""Dataset formats users already have, converted to the manifest (mbpo_core.data.manifest), and the
mined pairs exported as a TRL preference dataset.

Importers (`convert`): each source row becomes one manifest sample; images are decoded within the
limits and written as PNG files under `images/` of the output directory (named by the hash of their
bytes, so a repeated image is stored once). Problems are `ManifestError`s whose `line` is the
1-based row number in the source (rows counted across files and splits, in order), the same shape as
a manifest's report. Formats (`FORMATS`; `detect_format` picks one from the files):

- `manifest`: the project's own JSONL manifest (nothing to convert).
- `hf_disk`:  a `datasets` directory (`Dataset.save_to_disk`, or a `DatasetDict`: every split, the
              split kept as the sample's `split`) with plain columns (`COLUMNS`, renamable).
- `parquet`:  a parquet file, or a directory of them, with the same plain columns.
- `trl`:      TRL's conversational vision formats in any of those containers or in JSONL: `messages`
              (first user turn = question, the assistant turn after it = answer), prompt-completion
              (`prompt`, `completion`; the last user turn of the prompt is the question) or
              preference (`prompt`, `chosen`, `rejected`: the chosen answer is the sample's answer,
              the rejected one is kept as the sample's `rejected` field); images in `images` (a
              list) or `image`. The number of images must equal the number of image placeholders
              (`{"type": "image"}` parts, or `<image>` in plain-text content), and a sample has one.
- `llava`:    a LLaVA JSON file (a list of `{"id", "image", "conversations"}`), images relative to
              the file's directory. Only the first human/gpt exchange becomes a sample: later turns
              of a LLaVA conversation often lean on the earlier ones ("why?") and would be wrong
              questions on their own.

Image values: an HF `Image` value (`{"bytes", "path"}`: the bytes when present, else the path), raw
bytes, or a path relative to the source directory (never outside it). A sample without a `task`
gets one inferred from its answer (`infer_task`). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbpo_core.data.manifest import (
    ManifestError,
    open_image_checked,
    parse_line,
    resolve_image_path,
)
from mbpo_core.data.pairs import iter_pairs
from mbpo_core.data.verifiers import parse_number

MANIFEST_NAME = "manifest.jsonl"
FORMATS: tuple[str, ...] = ("manifest", "hf_disk", "parquet", "trl", "llava")
# The plain columns of hf_disk / parquet, renamable with `columns={"question": "query", ...}`.
COLUMNS: tuple[str, ...] = ("id", "image", "question", "answer", "task", "choices")
IMAGE_PLACEHOLDER = "<image>"
_BATCH_ROWS = 256
_HF_MARKERS = ("state.json", "dataset_dict.json")


class ConversionStopped(Exception):
    """`should_stop` answered true: the caller no longer owns the job."""


@dataclass(frozen=True)
class Source:
    """What `detect_format` found: the format and the file or directory to read."""

    format: str
    path: Path


@dataclass
class Conversion:
    format: str
    rows: int = 0
    samples: int = 0
    errors: list[ManifestError] = field(default_factory=list)


# ---- detection ----------------------------------------------------------------------------------


def _first_jsonl_object(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    obj = json.loads(raw)
                except ValueError:
                    return None
                return obj if isinstance(obj, dict) else None
    return None


def _is_trl(columns: Sequence[str]) -> bool:
    names = set(columns)
    return "messages" in names or ("prompt" in names and bool(names & {"completion", "chosen"}))


def _hf_columns(path: Path) -> list[str]:
    """Column names of a save_to_disk directory, from its dataset_info.json (first split of a dict)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits") or []
        path = path / str(splits[0]) if splits else path
    info = path / "dataset_info.json"
    features = json.loads(info.read_text()).get("features") if info.is_file() else None
    return list(features) if isinstance(features, dict) else []


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    files = _parquet_files(path)
    return list(pq.read_schema(files[0]).names) if files else []


def _found(p: Path) -> tuple[tuple[str, ...], Path, str] | None:
    """(formats the container can hold, the file or directory to read, the format auto picks)."""
    if p.is_dir():
        jsonl = sorted(x for x in p.glob("*.jsonl") if x.is_file())
        json_files = sorted(x for x in p.glob("*.json") if x.is_file())
        if (p / MANIFEST_NAME).is_file():
            return ("manifest",), p, "manifest"
        if any((p / m).is_file() for m in _HF_MARKERS):
            return ("hf_disk", "trl"), p, "trl" if _is_trl(_hf_columns(p)) else "hf_disk"
        if _parquet_files(p):
            return ("parquet", "trl"), p, "trl" if _is_trl(_parquet_columns(p)) else "parquet"
        if len(jsonl) == 1:
            return _found(jsonl[0])
        if len(json_files) == 1:
            return _found(json_files[0])
        return None
    if p.suffix == ".parquet":
        return ("parquet", "trl"), p, "trl" if _is_trl(_parquet_columns(p)) else "parquet"
    if p.suffix == ".jsonl":
        first = _first_jsonl_object(p)
        return ("manifest", "trl"), p, "trl" if first is not None and _is_trl(list(first)) else "manifest"
    if p.suffix == ".json":
        return ("llava",), p, "llava"
    return None


def detect_format(path: str | Path, format: str = "auto") -> Source:
    """The format of `path` (a file or directory), checked against an explicit `format`.

    Looks only at names, parquet schemas, dataset_info.json and a JSONL file's first line, so it is
    cheap enough for a request. Raises ManifestError (`field` = "path" or "format")."""
    p = Path(path)
    if format not in ("auto", *FORMATS):
        raise ManifestError(
            "unknown_format", f"format must be auto or one of {', '.join(FORMATS)}", field="format"
        )
    if not p.exists():
        raise ManifestError("path_not_found", f"{p} does not exist", field="path")
    found = _found(p)
    if found is None:
        raise ManifestError(
            "unknown_format",
            "no dataset found: expected manifest.jsonl, a datasets save_to_disk directory, parquet "
            "files, a TRL JSONL file or a LLaVA JSON file",
            field="path",
        )
    possible, target, auto = found
    if format == "auto":
        return Source(auto, target)
    if format not in possible:
        raise ManifestError(
            "format_mismatch",
            f"format {format!r} given, but {p.name} holds {' or '.join(possible)} data",
            field="format",
        )
    return Source(format, target)


# ---- reading rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    number: int
    values: dict[str, Any]
    where: str  # file or split, for messages when a source has several
    split: str | None = None


def _hf_rows(path: Path) -> Iterator[tuple[str | None, dict[str, Any]]]:
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    splits = list(loaded.items()) if isinstance(loaded, DatasetDict) else [(None, loaded)]
    for split, dataset in splits:
        for batch in dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS):
            for values in batch.to_pylist():
                yield split, values


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for file in _parquet_files(path):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS):
            for values in batch.to_pylist():
                yield file.name, values


def _rows(source: Source) -> Iterator[_Row | ManifestError]:
    p = source.path
    number = 0
    if p.is_dir() and any((p / m).is_file() for m in _HF_MARKERS):
        for split, values in _hf_rows(p):
            number += 1
            yield _Row(number, values, f"split {split}" if split else "", split)
    elif p.suffix == ".parquet" or (p.is_dir() and _parquet_files(p)):
        several = len(_parquet_files(p)) > 1
        for name, values in _parquet_rows(p):
            number += 1
            yield _Row(number, values, name if several else "")
    elif p.suffix == ".jsonl":
        with p.open("rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                number += 1
                try:
                    obj = json.loads(raw)
                except ValueError as exc:
                    yield ManifestError("invalid_json", f"row {number}: not valid JSON: {exc}", line=number)
                    continue
                if not isinstance(obj, dict):
                    yield ManifestError("invalid_json", f"row {number}: not a JSON object", line=number)
                    continue
                yield _Row(number, obj, "")
    else:
        try:
            data = json.loads(p.read_bytes())
        except ValueError as exc:
            yield ManifestError("invalid_json", f"{p.name} is not valid JSON: {exc}")
            return
        if not isinstance(data, list):
            yield ManifestError("invalid_json", f"{p.name} must hold a JSON list of samples")
            return
        for obj in data:
            number += 1
            if not isinstance(obj, dict):
                yield ManifestError("invalid_json", f"row {number}: not a JSON object", line=number)
                continue
            yield _Row(number, obj, "")


# ---- rows to fields -----------------------------------------------------------------------------


def infer_task(answer: str, choices: Sequence[str] = ()) -> str:
    """The task of a sample without one: multiple_choice with choices, yes_no when the answer is
    yes or no, number when it is a number (digits or one number word), else open."""
    if choices:
        return "multiple_choice"
    text = answer.strip().rstrip(".!").strip().lower()
    if text in ("yes", "no"):
        return "yes_no"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?|-?\d+(\.\d+)?", text):
        return "number"
    if re.fullmatch(r"[a-z]+(-[a-z]+)?", text) and text != "none" and parse_number(text) is not None:
        return "number"
    return "open"


def _error(code: str, message: str, row: _Row, fld: str | None = None) -> ManifestError:
    where = f" ({row.where})" if row.where else ""
    return ManifestError(code, f"row {row.number}{where}: {message}", line=row.number, field=fld)


def _text(value: Any, row: _Row, fld: str) -> str:
    if value is None:
        raise _error("missing_field", f"missing {fld!r}", row, fld)
    if not isinstance(value, str):
        raise _error("wrong_type", f"{fld!r} must be a string", row, fld)
    return value


def _content(content: Any, row: _Row, fld: str) -> tuple[str, int]:
    """(text, number of image placeholders) of one message's content."""
    if isinstance(content, str):
        return content.replace(IMAGE_PLACEHOLDER, "").strip(), content.count(IMAGE_PLACEHOLDER)
    if not isinstance(content, list):
        raise _error("wrong_type", f"{fld!r} content must be a string or a list of parts", row, fld)
    texts, images = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            images += 1
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise _error("wrong_type", f"{fld!r} has a part that is neither text nor image", row, fld)
    return "\n".join(texts).strip(), images


def _messages(value: Any, row: _Row, fld: str) -> list[tuple[str, str, int]]:
    """(role, text, placeholders) per message of a conversational column; a plain string is one
    user (prompt) or assistant (completion, chosen, rejected) message."""
    if isinstance(value, str):
        role = "user" if fld == "prompt" else "assistant"
        text, images = _content(value, row, fld)
        return [(role, text, images)]
    if not isinstance(value, list) or not value:
        raise _error("wrong_type", f"{fld!r} must be a non-empty list of messages", row, fld)
    out = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _error("wrong_type", f"{fld!r} has a message without a role", row, fld)
        text, images = _content(message.get("content"), row, fld)
        out.append((message["role"], text, images))
    return out


def _first_text(messages: list[tuple[str, str, int]], role: str, row: _Row, fld: str) -> str:
    for r, text, _ in messages:
        if r == role:
            return text
    raise _error("missing_field", f"{fld!r} has no {role} message", row, fld)


def _one_image(images: list[Any], placeholders: int, row: _Row) -> Any:
    if len(images) != placeholders:
        raise _error(
            "image_count_mismatch",
            f"{len(images)} image(s) for {placeholders} image placeholder(s)",
            row,
            "images",
        )
    if len(images) != 1:
        raise _error(
            "unsupported_images",
            f"a sample needs exactly one image, this row has {len(images)}",
            row,
            "images",
        )
    return images[0]


def _images_of(values: dict[str, Any], row: _Row) -> list[Any]:
    if values.get("images") is not None:
        images = values["images"]
        if not isinstance(images, list):
            raise _error("wrong_type", "'images' must be a list", row, "images")
        return images
    if values.get("image") is not None:
        return [values["image"]]
    return []


def _trl_fields(values: dict[str, Any], row: _Row) -> dict[str, Any]:
    if "messages" in values:
        messages = _messages(values["messages"], row, "messages")
        user = next((i for i, m in enumerate(messages) if m[0] == "user"), None)
        if user is None:
            raise _error("missing_field", "'messages' has no user turn", row, "messages")
        question = messages[user][1]
        answer = _first_text(messages[user + 1 :], "assistant", row, "messages")
        placeholders = sum(m[2] for m in messages)
        extra: dict[str, Any] = {}
    elif "prompt" in values:
        prompt = _messages(values["prompt"], row, "prompt")
        users = [m for m in prompt if m[0] == "user"]
        if not users:
            raise _error("missing_field", "'prompt' has no user turn", row, "prompt")
        question = users[-1][1]
        answer_field = "chosen" if "chosen" in values else "completion"
        answer_messages = _messages(values.get(answer_field), row, answer_field)
        answer = _first_text(answer_messages, "assistant", row, answer_field)
        placeholders = sum(m[2] for m in prompt) + sum(m[2] for m in answer_messages)
        extra = {}
        if answer_field == "chosen":
            rejected = _messages(values.get("rejected"), row, "rejected")
            extra["rejected"] = _first_text(rejected, "assistant", row, "rejected")
    else:
        raise _error("missing_field", "a TRL row needs 'messages' or 'prompt'", row, "messages")
    image = _one_image(_images_of(values, row), placeholders, row)
    # Optional `task` / `choices` columns next to the TRL ones are kept (a choice needs its options).
    return {
        "id": values.get("id"),
        "question": question,
        "answer": answer,
        "image": image,
        "task": values.get("task"),
        "choices": values.get("choices"),
        **extra,
    }


def _llava_fields(values: dict[str, Any], row: _Row) -> dict[str, Any]:
    turns = values.get("conversations")
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns
    ):
        raise _error("wrong_type", "'conversations' must be a list of {from, value}", row, "conversations")
    human = next((i for i, t in enumerate(turns) if t.get("from") == "human"), None)
    if human is None:
        raise _error("missing_field", "'conversations' has no human turn", row, "conversations")
    gpt = next((t for t in turns[human + 1 :] if t.get("from") == "gpt"), None)
    if gpt is None:
        raise _error(
            "missing_field", "'conversations' has no gpt turn after the human one", row, "conversations"
        )
    raw_images = values.get("image")
    images = raw_images if isinstance(raw_images, list) else [] if raw_images is None else [raw_images]
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    image = _one_image(images, placeholders, row)
    question = turns[human]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
    return {"id": values.get("id"), "question": question, "answer": gpt["value"].strip(), "image": image}


def _plain_fields(values: dict[str, Any], row: _Row, columns: Mapping[str, str]) -> dict[str, Any]:
    column = {name: columns.get(name, name) for name in COLUMNS}
    if column["image"] not in values:
        raise _error(
            "missing_field",
            f"no image column {column['image']!r} (columns: {', '.join(sorted(values))})",
            row,
            "image",
        )
    out = {name: values.get(column[name]) for name in COLUMNS}
    for name in ("question", "answer"):
        if column[name] not in values:
            raise _error("missing_field", f"no {name} column {column[name]!r}", row, name)
    return out


# ---- writing ------------------------------------------------------------------------------------


@dataclass
class _Writer:
    base: Path  # the source's directory: image paths are resolved inside it
    out: Path
    max_pixels: int
    max_bytes: int
    written: dict[str, str] = field(default_factory=dict)  # sha256 of the bytes -> image reference

    def image(self, value: Any, row: _Row) -> str:
        """The manifest reference of the row's image, decoded within the limits and stored as PNG."""
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, str):
            path = resolve_image_path(self.base, value, line=row.number)
            if path.stat().st_size > self.max_bytes:
                raise _error(
                    "image_too_large", f"image {value!r} is larger than {self.max_bytes} bytes", row, "image"
                )
            data = path.read_bytes()
        elif isinstance(value, bytes | bytearray):
            data = bytes(value)
        else:
            raise _error("missing_field", "no image", row, "image")
        digest = hashlib.sha256(data).hexdigest()
        if digest in self.written:
            return self.written[digest]
        if len(data) > self.max_bytes:
            raise _error(
                "image_too_large", f"image is {len(data)} bytes, limit {self.max_bytes}", row, "image"
            )
        ref = f"images/{digest[:24]}.png"
        tmp = self.out / "images" / f".{digest[:24]}.tmp"
        tmp.write_bytes(data)
        try:
            decoded, _ = open_image_checked(
                tmp, max_pixels=self.max_pixels, max_bytes=self.max_bytes, line=row.number
            )
            decoded.save(self.out / ref, "PNG")
        except ManifestError as exc:
            raise _error(exc.code, exc.message, row, "image") from exc
        finally:
            tmp.unlink(missing_ok=True)
        self.written[digest] = ref
        return ref


def _sample_line(fields: dict[str, Any], image: str, row: _Row) -> str:
    raw_id = fields.get("id")
    sample_id = f"row-{row.number}" if raw_id is None else str(raw_id)
    question = _text(fields.get("question"), row, "question")
    answer = _text(fields.get("answer"), row, "answer")
    choices = fields.get("choices") or []
    if not isinstance(choices, list):
        raise _error("wrong_type", "'choices' must be a list of strings", row, "choices")
    task = fields.get("task") or infer_task(answer, choices)
    obj: dict[str, Any] = {
        "id": sample_id,
        "image": image,
        "question": question,
        "answer": answer,
        "task": task,
    }
    if choices:
        obj["choices"] = choices
    if fields.get("rejected") is not None:
        obj["rejected"] = fields["rejected"]
    if row.split is not None:
        obj["split"] = row.split
    return json.dumps(obj, ensure_ascii=False)


def convert(
    src: str | Path,
    out_dir: str | Path,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    max_pixels: int,
    max_bytes: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> Conversion:
    """Write `out_dir/manifest.jsonl` and `out_dir/images/` from the dataset at `src`.

    Never raises for bad data: every problem is in `Conversion.errors` (and its row is left out).
    Raises ManifestError when the source is not a dataset at all (see detect_format) and
    ConversionStopped when `should_stop()` turns true."""
    unknown = sorted(set(columns or {}) - set(COLUMNS))
    if unknown:
        raise ManifestError("unknown_column", f"columns has unknown keys {unknown}", field="columns")
    source = detect_format(src, format)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    result = Conversion(format=source.format)
    if source.format == "manifest":
        raise ManifestError("format_mismatch", "a manifest needs no conversion", field="format")
    base = source.path if source.path.is_dir() else source.path.parent
    writer = _Writer(base=base, out=out, max_pixels=max_pixels, max_bytes=max_bytes)
    seen: set[str] = set()
    with (out / MANIFEST_NAME).open("w", encoding="utf-8") as manifest:
        for item in _rows(source):
            if should_stop():
                raise ConversionStopped()
            if isinstance(item, ManifestError):
                result.rows = item.line or result.rows
                result.errors.append(item)
                continue
            result.rows = item.number
            try:
                if source.format == "trl":
                    fields = _trl_fields(item.values, item)
                elif source.format == "llava":
                    fields = _llava_fields(item.values, item)
                else:
                    fields = _plain_fields(item.values, item, columns or {})
                text = _sample_line(fields, "images/pending.png", item)
                sample = parse_line(text, item.number)  # the manifest's own checks, before any image
                if sample.id in seen:
                    raise _error("duplicate_id", f"duplicate id {sample.id!r}", item, "id")
                image = writer.image(fields["image"], item)
            except ManifestError as exc:
                if not exc.message.startswith("row "):
                    exc = _error(exc.code, exc.message, item, exc.field)
                result.errors.append(exc)
                continue
            seen.add(sample.id)
            manifest.write(_sample_line(fields, image, item) + "\n")
            result.samples += 1
    if result.samples == 0 and not result.errors:
        result.errors.append(ManifestError("empty_manifest", "the dataset has no rows"))
    return result


# ---- export -------------------------------------------------------------------------------------


def _message(role: str, text: str, *, image: bool = False) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image", "text": None}] if image else []
    parts.append({"type": "text", "text": text})
    return [{"role": role, "content": parts}]


def pairs_to_preference_parquet(pairs_file: str | Path, out: str | Path) -> int:
    """Write mined pairs as a TRL preference dataset (parquet): `prompt` (a user turn: the clean
    image's placeholder and the question), `images` (one HF Image, bytes embedded), `chosen` (the
    ground truth) and `rejected` (the answer on the perturbed image), all conversational. Also
    `id` and `task`. Returns the number of rows; loads with `datasets.load_dataset("parquet")`."""
    from datasets import Dataset, Features, Image, List, Value

    base = Path(pairs_file).parent
    message = List(
        {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
    )
    features = Features(
        {
            "id": Value("string"),
            "task": Value("string"),
            "prompt": message,
            "images": List(Image()),
            "chosen": message,
            "rejected": message,
        }
    )
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for _, pair in iter_pairs(pairs_file):
        image = resolve_image_path(base, pair["image"])
        columns["id"].append(str(pair["id"]))
        columns["task"].append(pair["task"])
        columns["prompt"].append(_message("user", pair["question"], image=True))
        columns["images"].append([{"bytes": image.read_bytes(), "path": None}])
        columns["chosen"].append(_message("assistant", str(pair["chosen"])))
        columns["rejected"].append(_message("assistant", str(pair["rejected"])))
    dataset = Dataset.from_dict(columns, features=features)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        dataset.to_parquet(str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return len(dataset)
