"""Server paths a client may name: only inside the configured MBPO_DATA_ROOTS."""

from __future__ import annotations

from pathlib import Path

from api.errors import Unprocessable
from infra.settings import Settings


def resolve_allowed_path(raw: str, settings: Settings, *, field: str = "path") -> Path:
    """Resolve `raw` (symlinks included) and require it to exist inside one of the data roots."""
    roots = settings.resolved_data_roots
    if not roots:
        raise Unprocessable(
            "server paths are disabled: set MBPO_DATA_ROOTS to the directories clients may use",
            code="path_not_allowed",
            field=field,
        )
    if "\x00" in raw:
        raise Unprocessable("path contains a NUL byte", code="path_not_allowed", field=field)
    candidate = Path(
        raw
    )  # never expanded: "~user" is not an absolute path, and looking it up probes the host
    if not candidate.is_absolute():
        raise Unprocessable("path must be absolute", code="path_not_allowed", field=field)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        resolved = None
    # Checked before reporting existence, so the API cannot probe the server's file system.
    lexical_ok = any(candidate.is_relative_to(root) for root in roots)
    if resolved is None:
        if not lexical_ok:
            raise Unprocessable(
                "path is outside the allowed data roots", code="path_not_allowed", field=field
            )
        raise Unprocessable(f"{raw} does not exist", code="path_not_found", field=field)
    if not any(resolved.is_relative_to(root) for root in roots):
        raise Unprocessable("path is outside the allowed data roots", code="path_not_allowed", field=field)
    return resolved
