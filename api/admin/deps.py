"""Who is looking at an admin page: the browser session's key, its user and the CSRF token that
the page's forms and scripts must send back."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import Principal
from api.auth.sessions import CSRF_FIELD, SESSION_COOKIE, read_session, session_key
from api.deps import SessionSecretDep, get_session_factory
from api.errors import Forbidden


class LoginRequired(Exception):
    """No valid session: the page redirects to the login form."""

    def __init__(self, next_path: str):
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    user_name: str
    key_name: str
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin


def get_viewer(
    request: Request,
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
    secret: SessionSecretDep,
) -> Viewer:
    browser = read_session(secret, request.cookies.get(SESSION_COOKIE))
    if browser is None:
        raise LoginRequired(request.url.path)
    with factory.begin() as db:
        row = session_key(db, browser)
        if row is None:
            raise LoginRequired(request.url.path)
        principal = Principal(user_id=row.user_id, key_id=row.id, is_admin=row.is_admin)
        user_name, key_name = row.user.name, row.name
    return Viewer(principal, user_name, key_name, browser.csrf_token(secret))


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


async def get_form_viewer(request: Request, viewer: ViewerDep) -> Viewer:
    """A viewer whose form POST carried the session's CSRF token (403 otherwise)."""
    form = await request.form(max_files=0, max_fields=20)
    presented = form.get(CSRF_FIELD)
    if not isinstance(presented, str) or not hmac.compare_digest(presented, viewer.csrf_token):
        raise Forbidden("missing or invalid CSRF token", code="csrf_failed")
    return viewer


FormViewerDep = Annotated[Viewer, Depends(get_form_viewer)]
