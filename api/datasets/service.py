"""Dataset use cases: register from a server path or an upload, read, list.

Creation writes the row in `validating` and enqueues the validation job; the session dependency
commits, then sends the job (ids only). Upload files are staged and moved into place atomically;
if anything fails, the staged files are removed and nothing is half-written.

A dataset in another format than the manifest (mbpo_core.data.formats) is only recognised here, from
its file names and schema; the validation job converts it into a manifest + images under
MBPO_HOME/datasets/<id>/ (an upload waits in Settings.upload_source_dir until then).

A benchmark (`format: benchmark`, mbpo_core.evaluation.benchmarks.dataset) is registered from a server
path only and stays there: the validation job runs the benchmark's own loader on it. It can only be
an evaluation dataset of a run; benchmarks scored by a judge model are refused (the service
configures no judge).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from api.auth.service import Principal
from api.datasets import storage
from api.datasets.repository import DatasetRepository
from api.datasets.schemas import DatasetFromPath
from api.errors import NotFound, Unprocessable
from api.paths import resolve_allowed_path
from infra.db.base import new_id
from infra.db.models import Dataset, DatasetStatus
from infra.jobs import JobQueue, TaskName
from infra.settings import Settings
from mbpo_core.data.formats import Source, detect_format
from mbpo_core.data.manifest import ManifestError, ManifestSample, iter_manifest, resolve_image_path
from mbpo_core.evaluation.benchmarks.dataset import runnable_benchmarks, service_refusal

BENCHMARK_FORMAT = "benchmark"


def _detect(path: Path, format: str, *, path_field: str) -> Source:
    try:
        return detect_format(path, format)
    except ManifestError as exc:
        field = path_field if exc.field == "path" else exc.field
        raise Unprocessable(exc.message, code=exc.code, field=field) from exc


def _manifest_location(resolved: Path) -> tuple[Path, str]:
    if resolved.is_dir():
        if not (resolved / storage.MANIFEST_NAME).is_file():
            raise Unprocessable(
                f"directory has no {storage.MANIFEST_NAME}", code="manifest_not_found", field="path"
            )
        return resolved, storage.MANIFEST_NAME
    if resolved.is_file() and resolved.suffix == ".jsonl":
        return resolved.parent, resolved.name
    raise Unprocessable("path must be a directory or a .jsonl manifest", code="invalid_path", field="path")


def create_from_path(
    session: Session, jobs: JobQueue, settings: Settings, principal: Principal, body: DatasetFromPath
) -> Dataset:
    if body.benchmark is not None or body.format == BENCHMARK_FORMAT:
        return _create_benchmark(session, jobs, settings, principal, body)
    if body.images is not None:
        raise Unprocessable(
            "images is for benchmarks (with `benchmark`); a manifest names its images itself",
            code="validation_error",
            field="images",
        )
    resolved = resolve_allowed_path(body.path, settings)
    source = _detect(resolved, body.format, path_field="path")
    if source.format == "manifest":
        root, manifest_name = _manifest_location(source.path)
        dataset = Dataset(owner_id=principal.user_id, root_path=str(root), manifest_name=manifest_name)
    else:
        dataset_id = new_id("ds")
        dataset = Dataset(
            id=dataset_id,
            owner_id=principal.user_id,
            root_path=str(settings.datasets_dir / dataset_id),
            manifest_name=storage.MANIFEST_NAME,
            format=source.format,
            import_path=str(source.path),
            import_columns=body.columns,
        )
    dataset.name, dataset.source, dataset.status = body.name, "path", DatasetStatus.validating
    DatasetRepository(session).add(dataset)
    jobs.enqueue(TaskName.validate_dataset, dataset.id)
    return dataset


def benchmark_names() -> list[str]:
    """The benchmarks a dataset may be registered as: those a run can score."""
    return runnable_benchmarks()


def _create_benchmark(
    session: Session, jobs: JobQueue, settings: Settings, principal: Principal, body: DatasetFromPath
) -> Dataset:
    """A benchmark's official files at `body.path` (and images at `body.images`), checked by name and
    place here and by the benchmark's loader in the validation job."""
    if body.benchmark is None:
        raise Unprocessable(
            "format benchmark needs `benchmark`: which benchmark the files are (docs/benchmarks.md)",
            code="validation_error",
            field="benchmark",
        )
    if body.format not in ("auto", BENCHMARK_FORMAT):
        raise Unprocessable(
            f"`benchmark` given with format {body.format!r}: use format benchmark (or leave it out)",
            code="validation_error",
            field="format",
        )
    if body.columns is not None:
        raise Unprocessable(
            "columns maps the columns of hf_disk / parquet data, not a benchmark's",
            code="validation_error",
            field="columns",
        )
    if (refusal := service_refusal(body.benchmark)) is not None:
        raise Unprocessable(refusal.message, code=refusal.code, field="benchmark")
    data = resolve_allowed_path(body.path, settings)
    images = resolve_allowed_path(body.images, settings, field="images") if body.images else None
    if images is not None and not images.is_dir():
        raise Unprocessable("images must be a directory", code="invalid_path", field="images")
    dataset = DatasetRepository(session).add(
        Dataset(
            owner_id=principal.user_id,
            name=body.name,
            source="path",
            root_path=str(data),
            manifest_name="",
            format=BENCHMARK_FORMAT,
            benchmark=body.benchmark,
            images_path=str(images) if images else None,
            status=DatasetStatus.validating,
        )
    )
    jobs.enqueue(TaskName.validate_dataset, dataset.id)
    return dataset


def create_from_upload(
    session: Session,
    jobs: JobQueue,
    settings: Settings,
    principal: Principal,
    *,
    name: str,
    manifest: BinaryIO,
    images: BinaryIO | None,
) -> Dataset:
    name = _checked_name(name)
    dataset_id = new_id("ds")
    final_dir = settings.datasets_dir / dataset_id
    staging = settings.datasets_dir / f".staging-{dataset_id}"
    staging.mkdir(parents=True)
    try:
        if images is not None:
            storage.extract_zip(
                images,
                staging,
                max_total_bytes=settings.max_extracted_bytes,
                max_entries=settings.max_zip_entries,
                max_ratio=settings.max_zip_ratio,
            )
        # Written after the zip: the uploaded manifest wins over a zip entry of the same name.
        manifest_path = staging / storage.MANIFEST_NAME
        if manifest_path.is_dir():
            raise Unprocessable(
                f"zip has a directory named {storage.MANIFEST_NAME}", code="invalid_zip", field="images"
            )
        if storage.copy_stream(manifest, manifest_path) == 0:
            raise Unprocessable("manifest is empty", code="empty_manifest", field="manifest")
        os.rename(staging, final_dir)
    except BaseException:
        storage.remove_tree(staging)
        raise
    jobs.on_rollback(lambda: storage.remove_tree(final_dir))
    dataset = DatasetRepository(session).add(
        Dataset(
            id=dataset_id,
            owner_id=principal.user_id,
            name=name,
            source="upload",
            root_path=str(final_dir),
            manifest_name=storage.MANIFEST_NAME,
            status=DatasetStatus.validating,
        )
    )
    jobs.enqueue(TaskName.validate_dataset, dataset.id)
    return dataset


def _checked_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise Unprocessable("name must be 1 to 200 characters", code="validation_error", field="name")
    return name


def _archive_root(staging: Path) -> Path:
    """The dataset directory of an extracted archive: a zip of a folder holds that one folder."""
    entries = [p for p in staging.iterdir() if p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else staging


def create_from_archive(
    session: Session,
    jobs: JobQueue,
    settings: Settings,
    principal: Principal,
    *,
    name: str,
    archive: BinaryIO,
    format: str,
    columns: dict[str, str] | None,
) -> Dataset:
    """An upload of a whole dataset directory as a zip, in any format (detected unless given)."""
    name = _checked_name(name)
    dataset_id = new_id("ds")
    final_dir = settings.datasets_dir / dataset_id
    staging = settings.datasets_dir / f".staging-{dataset_id}"
    staging.mkdir(parents=True)
    try:
        storage.extract_zip(
            archive,
            staging,
            max_total_bytes=settings.max_extracted_bytes,
            max_entries=settings.max_zip_entries,
            max_ratio=settings.max_zip_ratio,
            field="archive",
        )
        source = _detect(_archive_root(staging), format, path_field="archive")
        if source.format == "manifest":
            root, manifest_name = _manifest_location(source.path)
            relative = root.relative_to(staging)
            os.rename(staging, final_dir)
            root = final_dir / relative
            import_path = None
        else:
            manifest_name = storage.MANIFEST_NAME
            source_dir = settings.upload_source_dir(dataset_id)
            os.rename(staging, source_dir)
            root, import_path = final_dir, str(source_dir / source.path.relative_to(staging))
    except BaseException:
        storage.remove_tree(staging)
        raise
    jobs.on_rollback(lambda: storage.remove_tree(final_dir))
    jobs.on_rollback(lambda: storage.remove_tree(settings.upload_source_dir(dataset_id)))
    dataset = DatasetRepository(session).add(
        Dataset(
            id=dataset_id,
            owner_id=principal.user_id,
            name=name,
            source="upload",
            root_path=str(root),
            manifest_name=manifest_name,
            format=source.format,
            import_path=import_path,
            import_columns=columns if import_path else None,
            status=DatasetStatus.validating,
        )
    )
    jobs.enqueue(TaskName.validate_dataset, dataset.id)
    return dataset


def get_dataset(session: Session, principal: Principal, dataset_id: str) -> Dataset:
    dataset = DatasetRepository(session).get_visible(dataset_id, principal)
    if dataset is None:
        # Another user's dataset is indistinguishable from a missing one.
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def list_datasets(
    session: Session, principal: Principal, *, before: str | None, limit: int
) -> Sequence[Dataset]:
    return DatasetRepository(session).list_visible(principal, before=before, limit=limit)


def thumbnails_dir(settings: Settings, dataset_id: str) -> Path:
    """Where the validation job writes a dataset's thumbnails and their `index.json` (id -> file)."""
    return settings.home_dir / "thumbnails" / dataset_id


@dataclass(frozen=True)
class SamplePreview:
    sample: ManifestSample
    thumbnail: str | None  # file name in thumbnails_dir, when the validation job made one


def preview_samples(settings: Settings, dataset: Dataset, *, limit: int) -> list[SamplePreview]:
    """The first `limit` valid samples of a dataset with their thumbnails (for a quick look); none
    for a benchmark (its items are no manifest samples)."""
    manifest = Path(dataset.root_path) / dataset.manifest_name
    if dataset.format == BENCHMARK_FORMAT or not manifest.is_file():
        return []
    index_file = thumbnails_dir(settings, dataset.id) / "index.json"
    index: dict[str, str] = {}
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text())
        except ValueError:
            index = {}
    out: list[SamplePreview] = []
    for _, item in iter_manifest(manifest):
        if isinstance(item, ManifestSample):
            out.append(SamplePreview(sample=item, thumbnail=index.get(item.id)))
            if len(out) >= limit:
                break
    return out


def sample_image_path(dataset: Dataset, sample_id: str) -> Path:
    """The image file of one valid sample, resolved inside the dataset directory (never outside)."""
    root = Path(dataset.root_path)
    manifest = root / dataset.manifest_name
    if dataset.format != BENCHMARK_FORMAT and manifest.is_file():
        for _, item in iter_manifest(manifest):
            if isinstance(item, ManifestSample) and item.id == sample_id:
                try:
                    path = resolve_image_path(root, item.image, line=item.line)
                except ManifestError:
                    break
                if path.is_file():
                    return path
                break
    raise NotFound(f"sample {sample_id} of dataset {dataset.id} has no image")
