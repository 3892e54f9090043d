"""/admin: the internal admin UI. Server-rendered pages (Jinja2, autoescaped) over the same service
layer as the REST routes; live parts (progress, events, charts) are small scripts of our own that
call the REST API with the session cookie and the CSRF header."""

from __future__ import annotations

import hmac
import re
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session, sessionmaker

from api.admin.config_form import config_sections
from api.admin.deps import FormViewerDep, LoginRequired, Viewer, ViewerDep
from api.audit import service as audit_service
from api.auth import service as auth_service
from api.auth.revocation import revoke_key as revoke_key_everywhere
from api.auth.sessions import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    issue_session,
)
from api.datasets import service as datasets_service
from api.datasets.schemas import DatasetDetail, DatasetRead
from api.deps import (
    JobQueueDep,
    RevocationsDep,
    SessionDep,
    SessionSecretDep,
    SettingsDep,
    get_session_factory,
)
from api.errors import AppError, Forbidden, NotFound
from api.models import service as models_service
from api.models.schemas import ModelRead
from infra.audit import AuditAction, record_audit
from infra.runs.lifecycle import RunStatus

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
_THUMBNAIL_NAME = re.compile(r"^[0-9a-f]{20}\.jpg$")
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}

router = APIRouter(prefix="/admin", include_in_schema=False)

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default_for_string=True, default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _static_version() -> str:
    # Cache-busting query for static files: changes whenever any of them changes.
    newest = max((p.stat().st_mtime_ns for p in STATIC_DIR.iterdir()), default=0)
    return format(newest, "x")[-8:]


_env.globals["static_version"] = _static_version()
_env.globals["CSRF_FIELD"] = CSRF_FIELD


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("viewer", None)
    context["path"] = request.url.path
    return HTMLResponse(_env.get_template(template).render(**context), status_code=status_code)


def _safe_next(value: str | None) -> str:
    # Only our own pages: an open redirect would make the login form a phishing tool.
    if value and value.startswith("/admin") and not value.startswith("//") and "\\" not in value:
        return value
    return "/admin/runs"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def login_required_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/admin/login?next={quote(exc.next_path)}", status_code=303)


@router.get("")
def admin_root() -> RedirectResponse:
    return RedirectResponse("/admin/runs", status_code=303)


# --- login / logout -----------------------------------------------------------------------------


def _login_page(
    request: Request, next_path: str, error: str | None = None, status_code: int = 200
) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", status_code=status_code, login_csrf=token, next_path=next_path, error=error
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        path="/admin/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, _safe_next(next))


@router.post("/login")
def login(
    request: Request,
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
    secret: SessionSecretDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf_token: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf_token, expected):
        raise Forbidden("missing or invalid CSRF token", code="csrf_failed")
    with factory.begin() as db:
        principal = auth_service.authenticate(db, api_key.strip())
        if principal is not None and principal.is_admin:
            record_audit(
                db,
                AuditAction.admin_login,
                target_kind="api_key",
                target_id=principal.key_id,
                actor_user_id=principal.user_id,
                actor_key_id=principal.key_id,
                detail={"client": request.client.host if request.client else None},
            )
    if principal is None:
        return _login_page(request, _safe_next(next), "That API key is not valid.", status_code=401)
    _, cookie = issue_session(secret, principal.key_id)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin/login")
    return response


@router.post("/logout")
def logout(_: FormViewerDep) -> Response:
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- runs ------------------------------------------------------------------------------------------


@router.get("/runs")
def runs_page(request: Request, viewer: ViewerDep) -> Response:
    return render(request, "runs.html", viewer=viewer, statuses=[s.value for s in RunStatus])


@router.get("/runs/new")
def launch_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    models = [
        ModelRead.model_validate(m)
        for m in models_service.list_models(session, viewer.principal, before=None, limit=200)
    ]
    datasets = [
        DatasetRead.from_row(d)
        for d in datasets_service.list_datasets(session, viewer.principal, before=None, limit=200)
        if d.status == "ready"
    ]
    return render(
        request, "launch.html", viewer=viewer, models=models, datasets=datasets, sections=config_sections()
    )


@router.get("/runs/{run_id}")
def run_page(request: Request, viewer: ViewerDep, run_id: str) -> Response:
    return render(request, "run_detail.html", viewer=viewer, run_id=run_id)


@router.get("/runs/{run_id}/negatives")
def negatives_page(request: Request, viewer: ViewerDep, run_id: str) -> Response:
    return render(request, "negatives.html", viewer=viewer, run_id=run_id)


@router.get("/runs/{run_id}/scorecard")
def scorecard_page(request: Request, viewer: ViewerDep, run_id: str) -> Response:
    return render(request, "scorecard.html", viewer=viewer, run_id=run_id)


# --- spot-checks -------------------------------------------------------------------------------------


@router.get("/spot-check")
def spot_check_page(request: Request, viewer: ViewerDep) -> Response:
    return render(request, "spot_check.html", viewer=viewer)


# --- datasets ----------------------------------------------------------------------------------------


@router.get("/datasets")
def datasets_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    rows = datasets_service.list_datasets(session, viewer.principal, before=None, limit=200)
    return render(
        request,
        "datasets.html",
        viewer=viewer,
        datasets=[DatasetRead.from_row(r) for r in rows],
        benchmarks=datasets_service.benchmark_names(),
    )


@router.get("/datasets/{dataset_id}")
def dataset_page(
    request: Request, viewer: ViewerDep, session: SessionDep, settings: SettingsDep, dataset_id: str
) -> Response:
    row = datasets_service.get_dataset(session, viewer.principal, dataset_id)
    samples = datasets_service.preview_samples(settings, row, limit=24)
    return render(
        request, "dataset_detail.html", viewer=viewer, dataset=DatasetDetail.from_row(row), samples=samples
    )


@router.get("/datasets/{dataset_id}/thumbnails/{name}")
async def dataset_thumbnail(
    viewer: ViewerDep, session: SessionDep, settings: SettingsDep, dataset_id: str, name: str
) -> Response:
    if not _THUMBNAIL_NAME.match(name):
        raise NotFound("no such thumbnail")
    row = await run_in_threadpool(datasets_service.get_dataset, session, viewer.principal, dataset_id)
    path = datasets_service.thumbnails_dir(settings, row.id) / name
    if not path.is_file():
        raise NotFound("no such thumbnail")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/datasets/{dataset_id}/samples.json")
def dataset_samples(
    viewer: ViewerDep, session: SessionDep, settings: SettingsDep, dataset_id: str
) -> dict[str, Any]:
    """The first samples of a dataset for the spot-check picker: question, answer, image links."""
    row = datasets_service.get_dataset(session, viewer.principal, dataset_id)
    base = f"/admin/datasets/{quote(row.id)}"
    return {
        "samples": [
            {
                "id": p.sample.id,
                "question": p.sample.question,
                "answer": p.sample.answer,
                "task": p.sample.task,
                "thumbnail_url": f"{base}/thumbnails/{p.thumbnail}" if p.thumbnail else None,
                "image_url": f"{base}/samples/{quote(p.sample.id, safe='')}/image",
            }
            for p in datasets_service.preview_samples(settings, row, limit=48)
        ]
    }


@router.get("/datasets/{dataset_id}/samples/{sample_id}/image")
def dataset_sample_image(
    viewer: ViewerDep, session: SessionDep, settings: SettingsDep, dataset_id: str, sample_id: str
) -> Response:
    row = datasets_service.get_dataset(session, viewer.principal, dataset_id)
    path = datasets_service.sample_image_path(row, sample_id)
    # Only image types, with the type fixed here: a file of an unvalidated dataset must never be
    # served as HTML or script from our origin.
    media_type = _IMAGE_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise NotFound(f"sample {sample_id} has no image of a known type")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


# --- API keys ----------------------------------------------------------------------------------------


def _keys_page(request: Request, viewer: Viewer, session: Session, **extra: Any) -> Response:
    keys = auth_service.list_api_keys(session, viewer.principal)
    return render(request, "keys.html", viewer=viewer, keys=keys, **extra)


@router.get("/keys")
def keys_page(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    return _keys_page(request, viewer, session)


@router.post("/keys")
def create_key(
    request: Request,
    viewer: FormViewerDep,
    session: SessionDep,
    user: Annotated[str, Form(max_length=200)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    admin: Annotated[bool, Form()] = False,
) -> Response:
    try:
        row, key = auth_service.issue_api_key(
            session, viewer.principal, user_name=user, key_name=name or user, admin=admin
        )
    except AppError as exc:
        if exc.status_code != 422:
            raise
        return _keys_page(request, viewer, session, form_error=exc.message, form={"user": user, "name": name})
    return _keys_page(request, viewer, session, new_key=key, new_key_row=row)


@router.post("/keys/{key_id}/revoke")
def revoke_key(
    viewer: FormViewerDep, session: SessionDep, jobs: JobQueueDep, revocations: RevocationsDep, key_id: str
) -> Response:
    revoke_key_everywhere(session, jobs, revocations, viewer.principal, key_id)
    return RedirectResponse("/admin/keys", status_code=303)


# --- audit log ---------------------------------------------------------------------------------------


@router.get("/audit")
def audit_page(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    page = audit_service.audit_page(session, viewer.principal, cursor=cursor, limit=50)
    return render(request, "audit.html", viewer=viewer, page=page, cursor=cursor)
