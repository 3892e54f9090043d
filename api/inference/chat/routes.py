"""/v1/chat/completions: OpenAI-compatible, so the official clients work unchanged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from api.deps import PrincipalDep, SettingsDep, get_session_factory
from api.errors import error_responses
from api.inference.chat import service
from api.inference.chat.schemas import ChatCompletion, ChatCompletionRequest
from api.rate_limits import InferenceLimit

router = APIRouter(prefix="/chat", tags=["inference"])


@router.post(
    "/completions",
    response_model=ChatCompletion,
    dependencies=[InferenceLimit],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "With stream=true: SSE chunks."},
        **error_responses(404, 413, 429, 504, openai=True),
    },
)
async def create_chat_completion(
    request: Request,
    body: ChatCompletionRequest,
    principal: PrincipalDep,
    settings: SettingsDep,
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
) -> JSONResponse | StreamingResponse:
    """Answer a conversation with a base model (`model:<id>`) or an aligned checkpoint (`run:<id>`,
    `run:<id>@<step>`); images as `image_url` parts. Errors use OpenAI's error shape."""
    result = await service.complete(body, principal, settings, factory, request.app.state.resolved_models)
    if isinstance(result, ChatCompletion):
        return JSONResponse(result.model_dump(mode="json"))
    return StreamingResponse(
        result,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
