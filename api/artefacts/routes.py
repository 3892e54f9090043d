"""/v1/artefacts: authenticated access to a run's stored files (images and JSON reports only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from api.deps import PrincipalDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.runs import service

# Every route names an artefact: each can answer 404.
router = APIRouter(prefix="/artefacts", tags=["artefacts"], responses=error_responses(404))

ArtefactId = Annotated[str, PathParam(max_length=40)]
_FILE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {media_type: {} for media_type in sorted(set(service.ARTEFACT_FILE_TYPES.values()))},
        "description": "The file",
    }
}


@router.get("/{artefact_id}", response_class=FileResponse, responses=_FILE)
def download_artefact(
    artefact_id: ArtefactId, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> FileResponse:
    """The artefact's file (reports, mined pairs); directories are not served."""
    path, media_type = service.artefact_file(session, settings, principal, artefact_id, None)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{artefact_id}/files/{relative:path}", response_class=FileResponse, responses=_FILE)
def artefact_member(
    artefact_id: ArtefactId,
    relative: str,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> FileResponse:
    """A file the artefact refers to, by its path relative to the artefact (e.g. the clean and
    perturbed images of mined pairs). Never outside the run's directory; images and JSON only."""
    path, media_type = service.artefact_file(session, settings, principal, artefact_id, relative)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})
