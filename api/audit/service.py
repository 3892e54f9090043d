"""Reading the audit log: admins only, newest first, cursor-paginated."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.audit.repository import AuditRepository
from api.audit.schemas import AuditEntryRead
from api.auth.service import Principal
from api.errors import Forbidden, Unprocessable
from api.pagination import Page, decode_cursor, encode_cursor
from infra.db.base import INT64_MAX


def audit_page(
    session: Session, principal: Principal, *, cursor: str | None, limit: int
) -> Page[AuditEntryRead]:
    if not principal.is_admin:
        raise Forbidden("only an admin key may read the audit log")
    before = _entry_id(decode_cursor(cursor))
    rows = AuditRepository(session).newest(before=before, limit=limit + 1)
    data = [AuditEntryRead.from_row(entry, name) for entry, name in rows[:limit]]
    more = len(rows) > limit
    return Page[AuditEntryRead](data=data, next_cursor=encode_cursor(str(data[-1].id)) if more else None)


def _entry_id(value: str | None) -> int | None:
    """The entry id a cursor carries (entry ids are integers, not the string ids of other tables)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > INT64_MAX:
        raise Unprocessable("malformed cursor", code="invalid_cursor", field="cursor")
    return int(value)
