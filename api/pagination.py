"""Cursor pagination over time-ordered string ids (newest first)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Generic, TypeVar

from pydantic import BaseModel

from api.errors import Unprocessable
from api.text_input import storable

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        before = json.loads(raw)["before"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise Unprocessable("malformed cursor", code="invalid_cursor", field="cursor") from exc
    if not isinstance(before, str) or not storable(before):  # only ids are compared with it
        raise Unprocessable("malformed cursor", code="invalid_cursor", field="cursor")
    return before
