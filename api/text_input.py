"""Request text the database can store: no NUL character, no unpaired surrogate.

PostgreSQL text and jsonb cannot hold U+0000, and a lone UTF-16 surrogate (JSON allows `"\\ud800"`)
has no UTF-8 encoding: such a string, looked up or stored, would fail in the driver as a 500. So
request text is checked before any route sees it, and the first offender is a 422 naming it
(OpenAI's 400 under /v1/chat/, like any invalid body):

- JSON bodies, every string and object key (`unstorable_json_field`), by `api.body_limits`, which
  holds every JSON body before the app reads it;
- path and query parameters and headers of every /v1 route (`refuse_unstorable_text`, a dependency
  of the /v1 routers, after authentication);
- multipart text fields, by the route that reads the form (`check_text`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from api.errors import Unprocessable

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What JSON needs to carry such text: a \u0000 or surrogate escape, or NUL bytes (an invalid UTF-8
# body, or UTF-16/32). A body without any is storable as it is, with no need to parse it here.
_SUSPECT_JSON = re.compile(rb"\\u(0000|[dD][89a-fA-F])|\x00")


def storable(value: str) -> bool:
    # isascii() is one fast pass; only non-ASCII text can hold a surrogate.
    if value.isascii():
        return "\x00" not in value
    return _UNSTORABLE.search(value) is None


def unstorable_message(field: str) -> str:
    return f"{field}: text must not contain NUL characters or unpaired surrogates"


def check_text(value: str, field: str) -> None:
    if not storable(value):
        raise Unprocessable(unstorable_message(field), code="validation_error", field=field)


def _first_unstorable(document: Any) -> str | None:
    # Iterative, depth-first in document order: JSON nests as deep as the body allows.
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not storable(value):
                return path or "body"
            continue
        children: list[tuple[str, Any]] = []
        if isinstance(value, dict):
            for key, item in value.items():
                field = f"{path}.{key}" if path else str(key)
                if not storable(key):
                    return field
                children.append((field, item))
        elif isinstance(value, list):
            children = [(f"{path}.{i}" if path else str(i), item) for i, item in enumerate(value)]
        stack.extend(reversed(children))
    return None


def unstorable_json_field(body: bytes) -> str | None:
    """The dotted path of the first string of a JSON body the database cannot store ("body" for a
    bare string), or None: there is none, or the body is no JSON (the route will say so)."""
    if _SUSPECT_JSON.search(body) is None:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return _first_unstorable(document)


async def refuse_unstorable_text(request: Request) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str):
            check_text(value, name)
    for name, value in request.query_params.multi_items():
        check_text(value, name)
    for name, value in request.headers.items():
        check_text(value, name)
