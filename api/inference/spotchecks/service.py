"""Spot-checks: one image and question, every named model answering with the image and with its
null image, and the IIG of both answers; the models run concurrently on inference workers, and
the finished comparison is stored for the history."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Sequence

import anyio
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from api.auth.service import Principal
from api.errors import NotFound, Unprocessable
from api.inference.dispatch import send_inference
from api.inference.images import CheckedImage, load_image_url
from api.inference.models import ResolvedModel, resolve_model
from api.inference.spotchecks.repository import SpotCheckRepository
from api.inference.spotchecks.schemas import SpotCheckAnswer, SpotCheckCreate, SpotCheckImage, SpotCheckRead
from infra.db.models import SpotCheckRecord
from infra.requests import RequestKind
from infra.settings import Settings
from mbpo_core.data.verifiers import normalize_open


async def _resolve_all(
    factory: sessionmaker[Session], principal: Principal, names: Sequence[str]
) -> list[ResolvedModel]:
    def lookup() -> list[ResolvedModel]:
        with factory.begin() as session:
            return [resolve_model(session, principal, n, field=f"models.{i}") for i, n in enumerate(names)]

    return await anyio.to_thread.run_sync(lookup)


async def _ask(
    settings: Settings, model: ResolvedModel, body: SpotCheckCreate, image: CheckedImage
) -> SpotCheckAnswer:
    payload = {
        "model": model.spec(),
        "image": image.b64,
        "question": body.question,
        "null_image": body.null_image,
        "max_tokens": body.max_tokens,
    }
    async with send_inference(settings, RequestKind.spot_check, payload) as replies:
        result = await replies.until("result")
    return SpotCheckAnswer(
        model=model.name,
        answer=result["answer"],
        null_answer=result["null_answer"],
        answer_iig=result["answer_iig"],
        null_answer_iig=result["null_answer_iig"],
        same_as_prior=normalize_open(result["answer"]) == normalize_open(result["null_answer"]),
        seconds=result["seconds"],
    )


def _thumbnail(image: CheckedImage, size: int) -> str:
    with Image.open(io.BytesIO(image.data)) as img:
        thumb = img.convert("RGB")
        thumb.thumbnail((size, size))
        out = io.BytesIO()
        thumb.save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def to_read(record: SpotCheckRecord) -> SpotCheckRead:
    return SpotCheckRead(
        id=record.id,
        created_at=record.created_at,
        question=record.question,
        null_image=record.null_image,
        max_tokens=record.max_tokens,
        image=SpotCheckImage(
            sha256=record.image_sha256,
            width=record.image_width,
            height=record.image_height,
            thumbnail=record.thumbnail,
        ),
        results=[SpotCheckAnswer.model_validate(r) for r in record.results],
    )


async def create_spot_check(
    session: Session,
    factory: sessionmaker[Session],
    principal: Principal,
    settings: Settings,
    body: SpotCheckCreate,
) -> SpotCheckRecord:
    names = list(dict.fromkeys(n.strip() for n in body.models))
    if len(names) < 2:
        raise Unprocessable(
            "a spot-check compares two or more different models", code="too_few_models", field="models"
        )
    models = await _resolve_all(factory, principal, names)
    image = await load_image_url(body.image, settings, "image")
    answers = await asyncio.gather(*(_ask(settings, m, body, image) for m in models))
    record = SpotCheckRecord(
        owner_id=principal.user_id,
        question=body.question,
        null_image=body.null_image,
        max_tokens=body.max_tokens,
        image_sha256=image.sha256,
        image_width=image.width,
        image_height=image.height,
        thumbnail=_thumbnail(image, settings.thumbnail_size),
        models=names,
        results=[a.model_dump() for a in answers],
    )
    return await anyio.to_thread.run_sync(SpotCheckRepository(session).add, record)


def get_spot_check(session: Session, principal: Principal, spot_check_id: str) -> SpotCheckRecord:
    record = SpotCheckRepository(session).get_visible(spot_check_id, principal)
    if record is None:
        raise NotFound(f"spot-check {spot_check_id} not found")
    return record


def list_spot_checks(
    session: Session, principal: Principal, *, before: str | None, limit: int
) -> Sequence[SpotCheckRecord]:
    return SpotCheckRepository(session).list_visible(principal, before=before, limit=limit)
