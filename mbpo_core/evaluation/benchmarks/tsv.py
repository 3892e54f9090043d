"""The TSV layout of the multiple-choice benchmarks (MMBench, MMStar, AI2D) as VLMEvalKit and
LMMS-Eval distribute them: one question a row, a header naming the columns, the image base64 in
its `image` column. Shared by mmbench.py, mmstar.py and ai2d.py.

`read_table` reads a file: every row with the line it starts on (a quoted field may span lines),
after checking the header has the columns a benchmark needs (a missing column names the file and
line 1) and that every `index` is an integer used once. `ImageCache` decodes each image once into
a folder (the loader's `images` argument, by default `<data stem>_images/` beside the file) under
a name made from the hash of its base64 text: a file already there is the same image (a second
load writes nothing), rotated copies of a question share one file, and a changed TSV never reads
a stale one. As in VLMEvalKit, an `image` field of at most 64 characters is the index of another
row whose image it shares (the official files store rotated questions that way). A field that is
not base64 of an image is an error naming the file and line.

An empty field (pandas' NaN when the files were written) or "nan" is a missing value: an option
column that is missing is no option.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError

# A row's `image` of at most this many characters is another row's index (VLMEvalKit's rule).
IMAGE_REFERENCE_MAX_CHARS = 64
MISSING = ("", "nan", "NaN")
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp"}


def present(value: str | None) -> bool:
    return value is not None and value.strip() not in MISSING


def read_rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(first line of the row, {column: field}) of every row of the TSV file at `path`."""
    return list(_rows(path, required))


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as error:
        raise BenchmarkDataError(path, f"cannot read: {error.strerror or error}") from error
    # Base64 images are far longer than csv's default field limit (128 KiB).
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise BenchmarkDataError(path, "empty file (expected a header row)") from None
        # VLMEvalKit's evaluation lower-cases every column name but the option letters.
        header = [h if re.fullmatch(r"[A-Z]", h) else h.lower() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise BenchmarkDataError(path, f"missing column(s) {', '.join(missing)} in the header", line=1)
        start = reader.line_num + 1
        try:
            for fields in reader:
                if fields and any(f.strip() for f in fields):
                    if len(fields) != len(header):
                        raise BenchmarkDataError(
                            path, f"{len(fields)} fields, the header has {len(header)}", line=start
                        )
                    yield start, dict(zip(header, fields, strict=True))
                start = reader.line_num + 1
        except csv.Error as error:
            raise BenchmarkDataError(path, f"invalid TSV: {error}", line=start) from error


def default_cache(data: Path) -> Path:
    return data.parent / f"{data.stem}_images"


def letter_options(row: Mapping[str, str], letters: str) -> dict[str, str]:
    """{letter: option text} of the option columns of `row` that hold a value, in letter order."""
    return {c: row[c].strip() for c in letters if present(row.get(c))}


def check_answer(path: Path, line: int, answer: str, options: Mapping[str, str]) -> str:
    """The answer letter, which must be one of `options`."""
    answer = answer.strip()
    if answer not in options:
        raise BenchmarkDataError(
            path, f"answer {answer!r} is not one of the options ({', '.join(options) or 'none'})", line=line
        )
    return answer


class ImageCache:
    """Decodes the base64 images of one TSV file into `folder`, each image once. `fields` maps every
    row's index to its image field, so that a row may name another row's image by its index."""

    def __init__(self, source: Path, folder: Path, fields: Mapping[str, str]):
        self.source = source
        self.folder = folder
        self.fields = fields
        self._decoded: dict[str, Path] = {}  # digest of an image field -> its file

    def path(self, field: str, line: int) -> Path:
        """The file of the image in `field` (base64, or another row's index), decoded on first use."""
        field = field.strip()
        if len(field) <= IMAGE_REFERENCE_MAX_CHARS:
            target = self.fields.get(field, "").strip()
            if len(target) <= IMAGE_REFERENCE_MAX_CHARS:
                raise BenchmarkDataError(
                    self.source,
                    f"image {field!r} is neither base64 nor the index of a row with an image",
                    line=line,
                )
            field = target
        digest = hashlib.sha256(field.encode("utf-8")).hexdigest()[:24]
        if digest not in self._decoded:
            self._decoded[digest] = self._write(field, digest, line)
        return self._decoded[digest]

    def _write(self, field: str, digest: str, line: int) -> Path:
        try:
            data = base64.b64decode(field, validate=True)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                image_format = image.format or "PNG"
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as error:
            raise BenchmarkDataError(
                self.source, f"image is not a base64-encoded image ({error})", line=line
            ) from error
        target = self.folder / f"{digest}{FORMAT_SUFFIX.get(image_format, '.img')}"
        if target.is_file():  # decoded by an earlier load: the name is the content's hash
            return target
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            partial.write_bytes(data)
            partial.replace(target)  # atomic: a concurrent reader sees the whole file or none
        except OSError as error:
            raise BenchmarkDataError(
                self.folder,
                f"cannot write the decoded images here ({error.strerror or error}); pass another "
                "folder as the image directory (--images)",
            ) from error
        return target


@dataclass(frozen=True)
class Row:
    line: int  # the line the row starts on
    index: int  # its `index` column
    fields: dict[str, str]


@dataclass(frozen=True)
class Table:
    """A benchmark TSV file's rows and the cache their images decode into."""

    rows: list[Row]
    images: ImageCache

    def image(self, row: Row) -> Path:
        return self.images.path(row.fields["image"], row.line)


def read_table(data: Path, images: Path | None, required: Sequence[str]) -> Table:
    """The rows of the TSV file `data` (which must have the `required` columns and integer, unique
    indexes); images decode into `images`, or `<data stem>_images/` beside `data`."""
    if not data.is_file():
        raise BenchmarkDataError(data, "expected the benchmark's TSV file")
    rows: list[Row] = []
    lines: dict[int, int] = {}
    for line, fields in read_rows(data, ("index", "image", *required)):
        value = fields["index"].strip()
        if not re.fullmatch(r"-?\d+", value):
            raise BenchmarkDataError(data, f"index {value!r} is not an integer", line=line)
        index = int(value)
        if index in lines:
            raise BenchmarkDataError(data, f"index {index} already on line {lines[index]}", line=line)
        lines[index] = line
        rows.append(Row(line, index, fields))
    if not rows:
        raise BenchmarkDataError(data, "no rows after the header")
    fields_by_index = {str(row.index): row.fields["image"] for row in rows}
    return Table(rows, ImageCache(data, images or default_cache(data), fields_by_index))
