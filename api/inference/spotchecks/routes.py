"""/v1/spot-checks: is a model looking at the image, or answering from its language prior?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session, sessionmaker

from api.deps import PrincipalDep, SessionDep, SettingsDep, get_session_factory
from api.errors import error_responses
from api.inference.spotchecks import service
from api.inference.spotchecks.schemas import SpotCheckCreate, SpotCheckRead
from api.pagination import Page, decode_cursor, encode_cursor
from api.rate_limits import InferenceLimit

router = APIRouter(prefix="/spot-checks", tags=["inference"])


@router.post(
    "",
    status_code=201,
    response_model=SpotCheckRead,
    dependencies=[InferenceLimit],
    responses=error_responses(400, 404, 413, 429, 504),
)
async def create_spot_check(
    body: SpotCheckCreate,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
) -> SpotCheckRead:
    """Ask two or more models about one image: each answer, the answer on a null image (the prior
    alone), and the IIG of both. Waits for the answers, then stores the spot-check."""
    record = await service.create_spot_check(session, factory, principal, settings, body)
    return service.to_read(record)


@router.get("", response_model=Page[SpotCheckRead])
def list_spot_checks(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query()] = None,
) -> Page[SpotCheckRead]:
    rows = service.list_spot_checks(session, principal, before=decode_cursor(cursor), limit=limit + 1)
    page = [service.to_read(r) for r in rows[:limit]]
    return Page[SpotCheckRead](
        data=page, next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None
    )


@router.get("/{spot_check_id}", response_model=SpotCheckRead, responses=error_responses(404))
def get_spot_check(spot_check_id: str, session: SessionDep, principal: PrincipalDep) -> SpotCheckRead:
    return service.to_read(service.get_spot_check(session, principal, spot_check_id))
