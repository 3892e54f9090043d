"""Files of uploaded datasets: the manifest copy and the safe extraction of the image zip.

A zip is hostile until proven otherwise: entry names may climb out with `..` or be absolute,
entries may be symlinks, and a few kilobytes may inflate to terabytes. Every entry is checked
before anything is written, and sizes are counted while extracting (the declared sizes can lie).
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from api.errors import PayloadTooLarge, Unprocessable

MANIFEST_NAME = "manifest.jsonl"
_CHUNK = 1024 * 1024
# Small entries may compress extremely well (blank PNG rows); the ratio rule starts above this.
_RATIO_MIN_BYTES = 1024 * 1024


def _safe_entry_name(name: str, field: str) -> PurePosixPath:
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if posix.startswith("/") or PureWindowsPath(name).drive or ".." in path.parts or "\x00" in name:
        raise Unprocessable(
            f"zip entry {name!r} escapes the dataset directory", code="unsafe_zip", field=field
        )
    return path


def _check_entries(
    infos: list[zipfile.ZipInfo], *, max_total_bytes: int, max_entries: int, max_ratio: int, field: str
) -> None:
    if len(infos) > max_entries:
        raise Unprocessable(
            f"zip has {len(infos)} entries, limit {max_entries}", code="zip_bomb", field=field
        )
    total = 0
    for info in infos:
        _safe_entry_name(info.filename, field)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise Unprocessable(f"zip entry {info.filename!r} is a symlink", code="unsafe_zip", field=field)
        if info.flag_bits & 0x1:
            raise Unprocessable(f"zip entry {info.filename!r} is encrypted", code="invalid_zip", field=field)
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise Unprocessable(
                f"zip entry {info.filename!r} compresses {info.file_size // max(info.compress_size, 1)}:1 "
                f"(limit {max_ratio}:1)",
                code="zip_bomb",
                field=field,
            )
        total += info.file_size
    if total > max_total_bytes:
        raise PayloadTooLarge(
            f"zip expands to {total} bytes, limit {max_total_bytes}",
            code="extracted_too_large",
            field=field,
        )


def extract_zip(
    source: BinaryIO,
    dest: Path,
    *,
    max_total_bytes: int,
    max_entries: int,
    max_ratio: int,
    field: str = "images",
) -> int:
    """Extract `source` into `dest` (which must exist); returns the number of files written.
    Problems name `field`, the upload's form field."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Unprocessable(
            f"{field} is not a valid zip file: {exc}", code="invalid_zip", field=field
        ) from exc
    with zf:
        infos = zf.infolist()
        _check_entries(
            infos, max_total_bytes=max_total_bytes, max_entries=max_entries, max_ratio=max_ratio, field=field
        )
        written = 0
        total = 0
        for info in infos:
            target = dest.joinpath(*_safe_entry_name(info.filename, field).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            remaining = info.file_size
            try:
                with zf.open(info) as src, target.open("xb") as out:
                    while chunk := src.read(_CHUNK):
                        remaining -= len(chunk)
                        total += len(chunk)
                        if remaining < 0 or total > max_total_bytes:
                            raise Unprocessable(
                                f"zip entry {info.filename!r} is larger than it declares",
                                code="zip_bomb",
                                field=field,
                            )
                        out.write(chunk)
            except FileExistsError as exc:
                raise Unprocessable(
                    f"zip entry {info.filename!r} appears twice", code="invalid_zip", field=field
                ) from exc
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
                raise Unprocessable(
                    f"zip entry {info.filename!r}: {exc}", code="invalid_zip", field=field
                ) from exc
            written += 1
        return written


def copy_stream(source: BinaryIO, target: Path) -> int:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)
    return target.stat().st_size


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
