"""The FastAPI application factory (`uvicorn --factory api.app:create_app`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, FastAPI

from api.admin import mount_admin
from api.artefacts.routes import router as artefacts_router
from api.audit.routes import router as audit_router
from api.auth.cache import AuthCache
from api.auth.revocation import Revocations
from api.body_limits import JsonBodyLimit
from api.datasets.routes import router as datasets_router
from api.deps import get_principal
from api.errors import document_errors, error_responses, register_error_handlers
from api.health.routes import router as health_router
from api.inference.chat.routes import router as chat_router
from api.inference.models import ResolvedModels
from api.inference.spotchecks.routes import router as spot_checks_router
from api.keys.routes import router as keys_router
from api.limits import read_slot_count, slot_count
from api.metrics import mount_metrics
from api.models.routes import router as models_router
from api.rate_limits import RateLimiter
from api.runs.routes import router as runs_router
from api.text_input import refuse_unstorable_text
from infra.db.session import get_session_factory, make_read_session_factory
from infra.settings import Settings, get_settings

API_VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = FastAPI(
        title="MBPO alignment service",
        version=API_VERSION,
        description="Align vision-language models against hallucination with Modality-Balancing "
        "Preference Optimization. Every /v1 route needs `Authorization: Bearer <API key>`.",
    )
    app.state.settings = settings
    app.state.auth_cache = AuthCache()
    app.state.auth_revocations = Revocations(settings, app.state.auth_cache)
    app.state.rate_limiter = RateLimiter(settings)
    app.state.resolved_models = ResolvedModels()
    app.state.session_factory = get_session_factory(
        settings.sqlalchemy_url, settings.db_pool_size, settings.db_max_overflow
    )
    app.state.read_session_factory = make_read_session_factory(app.state.session_factory.kw["bind"])
    register_error_handlers(app)
    document_errors(app)
    app.add_middleware(JsonBodyLimit, settings=settings)
    # Fewer request sessions than pooled connections (see api.limits).
    app.state.db_slot_count = slot_count(settings.db_pool_size)
    app.state.read_slot_count = read_slot_count(settings.db_read_concurrency)

    app.include_router(health_router)
    # Authentication on the routers: no /v1 route can forget it; then text the database can store.
    # Each router documents the errors all its routes can answer, in its API's error shape.
    checks = [Depends(get_principal, scope="function"), Depends(refuse_unstorable_text)]
    v1 = APIRouter(prefix="/v1", dependencies=checks, responses=error_responses(401, 403, 422, 503))
    v1.include_router(datasets_router)
    v1.include_router(models_router)
    v1.include_router(runs_router)
    v1.include_router(artefacts_router)
    v1.include_router(spot_checks_router)
    v1.include_router(keys_router)
    v1.include_router(audit_router)
    app.include_router(v1)
    openai_v1 = APIRouter(
        prefix="/v1", dependencies=checks, responses=error_responses(400, 401, 403, 503, openai=True)
    )
    openai_v1.include_router(chat_router)
    app.include_router(openai_v1)
    mount_admin(app)
    mount_metrics(app, settings)
    return app
