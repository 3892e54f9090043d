"""The internal admin UI, served by the API under /admin."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.admin.deps import LoginRequired
from api.admin.routes import STATIC_DIR, login_required_handler, router
from api.admin.security import AdminSecurityHeaders


def mount_admin(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
    app.add_exception_handler(LoginRequired, login_required_handler)
    app.add_middleware(AdminSecurityHeaders)
