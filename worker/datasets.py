"""Dataset validation: every manifest line parsed, every image opened and checked, stats and
thumbnails produced; a dataset registered in another format (HF datasets, parquet, TRL, LLaVA) is
first converted into a manifest + images in its storage directory (mbpo_core.data.formats).
A benchmark's files are read by the benchmark's own loader (the one `mbpo eval benchmark` and a run
use) and every image it names is opened; its first problem (the loaders stop there) is the report,
naming the file and the line or entry. Nothing is written for a benchmark but the row.
Plain functions; the Celery task in worker.tasks is a thin shell over `run_dataset_validation`, and
tests call these directly."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from infra.db.base import utcnow
from infra.db.lease import Lease, unclaimed
from infra.db.models import Dataset, DatasetStatus
from infra.settings import Settings
from mbpo_core.data.formats import ConversionStopped, convert
from mbpo_core.data.manifest import (
    ImageInfo,
    ManifestError,
    ManifestSample,
    iter_manifest,
    open_image_checked,
    resolve_image_path,
)
from mbpo_core.evaluation.benchmarks.common import BenchmarkDataError
from mbpo_core.evaluation.benchmarks.dataset import BenchmarkSource, item_counts

log = logging.getLogger(__name__)

# The report lists problems one by one up to this many; the counts by code are always complete.
MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int
    max_bytes: int


@dataclass
class ValidationResult:
    valid: bool
    num_samples: int
    task_counts: dict[str, int]
    stats: dict[str, Any]
    report: dict[str, Any]


class LeaseLost(Exception):
    """Another worker owns the job now; stop without writing anything."""


@dataclass
class _Collector:
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_counts: Counter[str] = field(default_factory=Counter)
    lines: int = 0
    samples: list[ManifestSample] = field(default_factory=list)
    images: dict[str, ImageInfo] = field(default_factory=dict)
    thumbnails: dict[str, str] = field(default_factory=dict)

    def error(self, exc: ManifestError) -> None:
        self.add(exc.as_dict())

    def add(self, problem: dict[str, Any]) -> None:
        self.error_counts[problem["code"]] += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(problem)


def _thumbnail_name(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()[:20] + ".jpg"


def _check_image(
    root: Path, sample: ManifestSample, limits: ImageLimits, thumbs: Path | None, size: int, out: _Collector
) -> None:
    if sample.image in out.images:
        return
    path = resolve_image_path(root, sample.image, line=sample.line)
    image, info = open_image_checked(
        path, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes, line=sample.line
    )
    if thumbs is not None:
        image.thumbnail((size, size))
        name = _thumbnail_name(sample.image)
        image.save(thumbs / name, "JPEG", quality=85)
        out.thumbnails[sample.image] = name
    out.images[sample.image] = info


def _task_stats(samples: list[ManifestSample]) -> dict[str, Any]:
    by_task: dict[str, list[ManifestSample]] = defaultdict(list)
    for s in samples:
        by_task[s.task].append(s)
    stats: dict[str, Any] = {}
    for task, group in sorted(by_task.items()):
        entry: dict[str, Any] = {
            "count": len(group),
            "mean_question_chars": round(statistics.fmean(len(s.question) for s in group), 2),
        }
        if task == "yes_no":
            answers = Counter(s.answer.strip().lower().rstrip(".") for s in group)
            entry["answers"] = dict(answers)
            entry["yes_ratio"] = round(
                sum(v for k, v in answers.items() if k.startswith("yes")) / len(group), 4
            )
        elif task == "multiple_choice":
            entry["answers"] = dict(Counter(s.answer.strip() for s in group).most_common(26))
            entry["choices_per_question"] = dict(Counter(str(len(s.choices)) for s in group))
        elif task == "number":
            values = [float(s.answer) for s in group if _is_float(s.answer)]
            if values:
                entry.update(min=min(values), max=max(values), mean=round(statistics.fmean(values), 4))
        else:
            entry["mean_answer_words"] = round(statistics.fmean(len(s.answer.split()) for s in group), 2)
        stats[task] = entry
    return stats


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _image_stats(images: dict[str, ImageInfo]) -> dict[str, Any]:
    if not images:
        return {"distinct": 0}
    infos = list(images.values())
    return {
        "distinct": len(infos),
        "min_width": min(i.width for i in infos),
        "max_width": max(i.width for i in infos),
        "min_height": min(i.height for i in infos),
        "max_height": max(i.height for i in infos),
        "total_bytes": sum(i.size_bytes for i in infos),
        "formats": dict(Counter(i.format for i in infos)),
    }


def validate_dataset_files(
    root: Path,
    manifest: Path,
    limits: ImageLimits,
    *,
    thumbnails_dir: Path | None = None,
    thumbnail_size: int = 128,
    should_stop: Callable[[], bool] = lambda: False,
) -> ValidationResult:
    """Check a manifest and its images. Never raises for bad data: problems go to the report."""
    out = _Collector()
    if thumbnails_dir is not None:
        thumbnails_dir.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        out.error(ManifestError("manifest_not_found", f"{manifest.name} not found"))
    else:
        for number, item in iter_manifest(manifest):
            if should_stop():
                raise LeaseLost()
            out.lines = number
            if isinstance(item, ManifestError):
                out.error(item)
                continue
            try:
                _check_image(root, item, limits, thumbnails_dir, thumbnail_size, out)
            except ManifestError as exc:
                out.error(exc)
                continue
            out.samples.append(item)
        if not out.samples and not out.errors:
            out.error(ManifestError("empty_manifest", "the manifest has no samples"))
    if thumbnails_dir is not None:
        index = {s.id: out.thumbnails[s.image] for s in out.samples if s.image in out.thumbnails}
        (thumbnails_dir / "index.json").write_text(json.dumps(index))
    stats: dict[str, Any] = {"tasks": _task_stats(out.samples), "images": _image_stats(out.images)}
    if thumbnails_dir is not None:
        stats["thumbnails"] = len(out.thumbnails)
    return _result(out, stats)


def _result(out: _Collector, stats: dict[str, Any], *, items: int | None = None) -> ValidationResult:
    """The result of a manifest check, or of a benchmark's with its item count `items`."""
    error_count = sum(out.error_counts.values())
    count = len(out.samples) if items is None else items
    report = {
        "lines": out.lines,
        "valid_samples": count,
        "error_count": error_count,
        "error_counts": dict(out.error_counts),
        "errors": out.errors,
        "errors_truncated": error_count > len(out.errors),
    }
    return ValidationResult(
        valid=error_count == 0,
        num_samples=count,
        task_counts=dict(Counter(s.task for s in out.samples)),
        stats=stats,
        report=report,
    )


def import_dataset_files(
    source: Path,
    root: Path,
    format: str,
    limits: ImageLimits,
    *,
    columns: dict[str, str] | None = None,
    staging: Path,
    should_stop: Callable[[], bool] = lambda: False,
) -> ValidationResult | None:
    """Convert the dataset at `source` into a manifest + images at `root` (built in `staging`, then
    renamed into place). Returns None when it converted cleanly (validate `root` next), else the
    invalid result whose report names the source rows; then nothing is left at `root` or `staging`.
    In the report of an imported dataset, `line` is the row number in the source."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        conversion = convert(
            source,
            staging,
            format=format,
            columns=columns,
            max_pixels=limits.max_pixels,
            max_bytes=limits.max_bytes,
            should_stop=should_stop,
        )
    except ConversionStopped as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LeaseLost() from exc
    except ManifestError as exc:  # the source is no dataset (any more): a report, not a crash
        shutil.rmtree(staging, ignore_errors=True)
        out = _Collector()
        out.error(exc)
        return _result(out, {})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if conversion.errors:
        shutil.rmtree(staging, ignore_errors=True)
        out = _Collector(lines=conversion.rows)
        for error in conversion.errors:
            out.error(error)
        return _result(out, {"converted_from": conversion.format})
    staging.rename(root)
    return None


def validate_benchmark_files(
    source: BenchmarkSource, limits: ImageLimits, *, should_stop: Callable[[], bool] = lambda: False
) -> ValidationResult:
    """Load a benchmark as a run will and open every image it names. Never raises for bad data."""
    out = _Collector()
    try:
        items = source.load()
    except BenchmarkDataError as exc:
        problem = {
            "code": "invalid_benchmark",
            "file": str(exc.path),
            "line": exc.line,
            "message": exc.message,
        }
        if exc.entry is not None:
            problem["entry"] = exc.entry
        out.add(problem)
        return _result(out, {"benchmark": {"name": source.name}}, items=0)
    if not items:
        out.add({"code": "empty_benchmark", "file": str(source.data), "line": None, "message": "no items"})
    images: dict[str, ImageInfo] = {}
    for item in items:
        if should_stop():
            raise LeaseLost()
        key = str(item.image)
        if key in images:
            continue
        try:
            _, images[key] = open_image_checked(
                item.image, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes
            )
        except (ManifestError, OSError) as exc:
            message = exc.message if isinstance(exc, ManifestError) else str(exc)
            code = exc.code if isinstance(exc, ManifestError) else "unreadable_image"
            out.add({"code": code, "file": key, "line": None, "message": f"item {item.id}: {message}"})
    stats = {"benchmark": {"name": source.name, **item_counts(items)}, "images": _image_stats(images)}
    return _result(out, stats, items=len(items))


def _summary(report: dict[str, Any]) -> str:
    first = report["errors"][0]
    where = f"{first['file']}, " if first.get("file") else ""
    if first.get("line"):
        where += f"line {first['line']}: "
    elif first.get("entry") is not None:
        where += f"entry {first['entry']}: "
    return f"{report['error_count']} problem(s); first: {where}{first['message']}"


def thumbnails_dir_for(settings: Settings, dataset_id: str) -> Path:
    return settings.home_dir / "thumbnails" / dataset_id


def run_dataset_validation(
    session_factory: sessionmaker[Session], settings: Settings, dataset_id: str, *, owner: str
) -> str | None:
    """Validate dataset `dataset_id` under a lease; returns the final status, or None when another
    worker holds (or already finished) the job, so a duplicate message does nothing."""
    lease = Lease(session_factory, Dataset, dataset_id, owner, timedelta(seconds=settings.lease_seconds))
    if not lease.claim([DatasetStatus.validating]):
        log.info("dataset %s: not claimable (done, or leased by another worker)", dataset_id)
        return None
    with session_factory() as session:
        dataset = session.get(Dataset, dataset_id)
        assert dataset is not None  # the claim just matched it
        root, manifest = Path(dataset.root_path), Path(dataset.root_path) / dataset.manifest_name
        benchmark = (
            BenchmarkSource(
                dataset.benchmark or "", root, Path(dataset.images_path) if dataset.images_path else None
            )
            if dataset.format == "benchmark"
            else None
        )
        to_import = (
            None if dataset.format in ("manifest", "benchmark") else (dataset.format, dataset.import_path)
        )
        columns, uploaded = dataset.import_columns, dataset.source == "upload"
    final_thumbs = thumbnails_dir_for(settings, dataset_id)
    staging = final_thumbs.with_name(f".{dataset_id}.{owner.replace(':', '_')}")
    shutil.rmtree(staging, ignore_errors=True)
    limits = ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
    try:
        with lease.keep_alive() as lost:
            result = None
            if benchmark is not None:
                result = validate_benchmark_files(benchmark, limits, should_stop=lost.is_set)
            elif to_import is not None and not manifest.is_file():
                result = import_dataset_files(
                    Path(to_import[1] or ""),
                    root,
                    to_import[0],
                    limits,
                    columns=columns,
                    staging=root.with_name(f".import-{dataset_id}.{owner.replace(':', '_')}"),
                    should_stop=lost.is_set,
                )
            if result is None:
                result = validate_dataset_files(
                    root,
                    manifest,
                    limits,
                    thumbnails_dir=staging,
                    thumbnail_size=settings.thumbnail_size,
                    should_stop=lost.is_set,
                )
        shutil.rmtree(final_thumbs, ignore_errors=True)
        if staging.exists():  # not when a conversion was refused before validating
            staging.rename(final_thumbs)
    except LeaseLost:
        shutil.rmtree(staging, ignore_errors=True)
        log.warning("dataset %s: lease lost, leaving it to the new owner", dataset_id)
        return None
    except Exception as exc:
        # Not bad data (that goes to the report) but a broken job: record it, never leave it hanging.
        shutil.rmtree(staging, ignore_errors=True)
        log.exception("dataset %s: validation crashed", dataset_id)
        lease.finish(
            status=DatasetStatus.failed,
            error_code="validation_crashed",
            error_message=f"{type(exc).__name__}: {exc}",
            validated_at=utcnow(),
        )
        if uploaded and to_import is not None:
            shutil.rmtree(settings.upload_source_dir(dataset_id), ignore_errors=True)
        return DatasetStatus.failed
    status = DatasetStatus.ready if result.valid else DatasetStatus.invalid
    written = lease.finish(
        status=status,
        num_samples=result.num_samples,
        task_counts=result.task_counts,
        stats=result.stats,
        report=result.report,
        validated_at=utcnow(),
        error_code=None if result.valid else "invalid_dataset",
        error_message=None if result.valid else _summary(result.report),
    )
    if not written:
        log.warning("dataset %s: lease expired before the result was written", dataset_id)
        return None
    if uploaded and to_import is not None:
        # The upload in its own format is converted (or refused): the dataset is `root` from now on.
        shutil.rmtree(settings.upload_source_dir(dataset_id), ignore_errors=True)
    log.info("dataset %s: %s (%d samples)", dataset_id, status, result.num_samples)
    return status


def stale_validations(session: Session, *, older_than: timedelta) -> list[str]:
    """Datasets still `validating` with no live lease: their message was lost or their worker died."""
    return unclaimed(session, Dataset, [DatasetStatus.validating], created_before=utcnow() - older_than)
