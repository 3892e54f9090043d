"""/healthz (the process is up) and /readyz (it can reach its database and broker, and MBPO_HOME
has at least MBPO_MIN_FREE_DISK_BYTES free)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker

from api.deps import SettingsDep, get_session_factory
from api.errors import ErrorResponse, error_body
from api.health.service import check_broker, check_database, check_disk

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"model": ErrorResponse, "description": "database or broker unreachable, or disk full"}},
)
async def readyz(
    settings: SettingsDep, factory: Annotated[sessionmaker[Session], Depends(get_session_factory)]
) -> JSONResponse:
    problems = {
        "database": await run_in_threadpool(check_database, factory),
        "broker": await run_in_threadpool(check_broker, settings),
        "disk": await run_in_threadpool(check_disk, settings),
    }
    checks: dict[str, Any] = {name: problem or "ok" for name, problem in problems.items()}
    failing = [f"{name}: {problem}" for name, problem in problems.items() if problem]
    if failing:
        body = error_body("not_ready", "; ".join(failing))
        body["checks"] = checks
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks, "embedded": settings.embedded})
