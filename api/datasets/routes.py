"""/v1/datasets: thin HTTP adapters over api.datasets.service."""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.datasets import service
from api.datasets.schemas import (
    COLUMNS_DESCRIPTION,
    FORMAT_DESCRIPTION,
    DatasetDetail,
    DatasetFormat,
    DatasetFromPath,
    DatasetRead,
)
from api.deps import JobQueueDep, PrincipalDep, ReaderDep, SessionDep, SettingsDep
from api.errors import Unprocessable, UnsupportedMediaType, error_responses
from api.pagination import Page, decode_cursor, encode_cursor
from api.text_input import check_text
from api.uploads import read_body, read_form
from infra.db.models import Dataset

router = APIRouter(prefix="/datasets", tags=["datasets"])

# A JSON registration is a name and a path; anything bigger is not one.
_MAX_JSON_BYTES = 64 * 1024

_CREATE_BODIES: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": DatasetFromPath.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "description": "Either manifest + images, or archive.",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "manifest": {"type": "string", "format": "binary", "description": "JSONL manifest"},
                        "images": {"type": "string", "format": "binary", "description": "zip of the images"},
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": "zip of a dataset directory in any format (instead of manifest "
                            "+ images)",
                        },
                        "format": {
                            "type": "string",
                            "enum": list(get_args(DatasetFormat)),
                            "default": "auto",
                            "description": FORMAT_DESCRIPTION,
                        },
                        "columns": {
                            "type": "string",
                            "description": "JSON object: " + COLUMNS_DESCRIPTION,
                        },
                    },
                }
            },
        },
    }
}


def _import_options(form: Any) -> tuple[str, dict[str, str] | None]:
    """The `format` and `columns` text fields of a multipart upload, checked as the JSON body's."""
    raw: dict[str, Any] = {"name": "x", "path": "x"}
    for key in ("format", "columns"):
        value = form.get(key)
        if value is not None and not isinstance(value, str):
            raise Unprocessable(f"multipart field {key!r} must be text", code="validation_error", field=key)
        if value is not None:
            check_text(value, key)
            raw[key] = value
    if "columns" in raw:
        try:
            raw["columns"] = json.loads(raw["columns"])
        except ValueError as exc:
            raise Unprocessable(
                "columns must be a JSON object", code="validation_error", field="columns"
            ) from exc
    try:
        body = DatasetFromPath.model_validate(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from exc
    return body.format, {str(k): v for k, v in body.columns.items()} if body.columns else None


def _file_field(form: Any, name: str, *, required: bool) -> UploadFile | None:
    value = form.get(name)
    if value is None:
        if required:
            raise Unprocessable(f"multipart field {name!r} is required", code="validation_error", field=name)
        return None
    if not isinstance(value, UploadFile):
        raise Unprocessable(f"multipart field {name!r} must be a file", code="validation_error", field=name)
    return value


@router.post(
    "",
    status_code=201,
    response_model=DatasetDetail,
    openapi_extra=_CREATE_BODIES,
    responses=error_responses(400, 413, 415),
)
async def create_dataset(
    request: Request, session: SessionDep, principal: PrincipalDep, settings: SettingsDep, jobs: JobQueueDep
) -> DatasetDetail:
    """Register a dataset from a server path (JSON) or upload one (multipart: manifest + images zip,
    or a zip of the dataset directory as `archive`). Formats: docs/api.md, "Dataset formats"; a
    benchmark's official files (JSON with `benchmark`, evaluation only): docs/benchmarks.md.

    The dataset starts `validating`; a worker moves it to `ready` or `invalid` (see its report)."""
    content_type = request.headers.get("content-type", "")
    dataset: Dataset
    if content_type.startswith("multipart/form-data"):
        form = await read_form(request, settings.max_upload_bytes, max_files=3, max_fields=3)
        try:
            name = form.get("name")
            if not isinstance(name, str):
                raise Unprocessable(
                    "multipart field 'name' is required", code="validation_error", field="name"
                )
            check_text(name, "name")
            format, columns = _import_options(form)
            if format == service.BENCHMARK_FORMAT:
                raise Unprocessable(
                    "a benchmark is registered from a server path: JSON {name, path, benchmark, images}",
                    code="validation_error",
                    field="format",
                )
            archive = _file_field(form, "archive", required=False)
            if archive is not None:
                for other in ("manifest", "images"):
                    if form.get(other) is not None:
                        raise Unprocessable(
                            f"send either archive or manifest + images, not both ({other!r} given)",
                            code="validation_error",
                            field=other,
                        )
                dataset = await run_in_threadpool(
                    service.create_from_archive,
                    session,
                    jobs,
                    settings,
                    principal,
                    name=name,
                    archive=archive.file,
                    format=format,
                    columns=columns,
                )
                return DatasetDetail.from_row(dataset)
            if format not in ("auto", "manifest"):
                raise Unprocessable(
                    f"format {format!r} is uploaded as an archive (zip of the dataset directory)",
                    code="validation_error",
                    field="archive",
                )
            manifest = _file_field(form, "manifest", required=True)
            images = _file_field(form, "images", required=True)
            assert manifest is not None
            dataset = await run_in_threadpool(
                service.create_from_upload,
                session,
                jobs,
                settings,
                principal,
                name=name,
                manifest=manifest.file,
                images=images.file if images else None,
            )
        finally:
            await form.close()
    elif content_type.startswith("application/json"):
        raw = await read_body(request, _MAX_JSON_BYTES)
        try:
            body = DatasetFromPath.model_validate_json(raw)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from exc
        dataset = await run_in_threadpool(service.create_from_path, session, jobs, settings, principal, body)
    else:
        raise UnsupportedMediaType(
            "send application/json ({name, path}) or multipart/form-data (name, manifest, images | archive)"
        )
    return DatasetDetail.from_row(dataset)


@router.get("", response_model=Page[DatasetRead])
async def list_datasets(
    read: ReaderDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[DatasetRead]:
    before = decode_cursor(cursor)

    def page(session: Session) -> Page[DatasetRead]:
        rows = service.list_datasets(session, principal, before=before, limit=limit + 1)
        data = [DatasetRead.from_row(r) for r in rows[:limit]]
        return Page[DatasetRead](
            data=data, next_cursor=encode_cursor(data[-1].id) if len(rows) > limit else None
        )

    return await read(page)


@router.get("/{dataset_id}", response_model=DatasetDetail, responses=error_responses(404))
async def get_dataset(dataset_id: str, read: ReaderDep, principal: PrincipalDep) -> DatasetDetail:
    return await read(
        lambda session: DatasetDetail.from_row(service.get_dataset(session, principal, dataset_id))
    )
