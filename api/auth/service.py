"""API keys: creation (the clear key is shown once) and authentication.

A key is `mbpo_<prefix>_<secret>`. The prefix is public and indexed (lookup); the database keeps
only SHA-256 of the whole key. A slow KDF is unnecessary: the secret has 256 bits of entropy, so
the hash cannot be brute-forced; the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from api.auth.repository import AuthRepository
from api.errors import Conflict, Forbidden, NotFound, Unprocessable
from infra.audit import AuditAction, record_audit
from infra.db.base import utcnow
from infra.db.models import ApiKey

KEY_PREFIX = "mbpo"
_LAST_USED_RESOLUTION = timedelta(minutes=1)
# Compared against when a prefix is unknown, so both paths do the same work.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: resources belong to `user_id`; admins see every user's resources."""

    user_id: str
    key_id: str
    is_admin: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new `(key, prefix)`."""
    prefix = secrets.token_hex(6)
    return f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def _split(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def create_api_key(
    session: Session, *, user_name: str, key_name: str, admin: bool, actor: Principal | None = None
) -> tuple[ApiKey, str]:
    """Create a key for user `user_name` (created if new), audited as done by `actor` (None: the
    command line). Returns the row and the clear key."""
    repo = AuthRepository(session)
    user = repo.user_by_name(user_name) or repo.add_user(user_name)
    key, prefix = generate_key()
    row = repo.add_key(
        ApiKey(user_id=user.id, name=key_name, prefix=prefix, key_hash=hash_key(key), is_admin=admin)
    )
    record_audit(
        session,
        AuditAction.key_create,
        target_kind="api_key",
        target_id=row.id,
        actor_user_id=actor.user_id if actor else None,
        actor_key_id=actor.key_id if actor else None,
        detail={"prefix": prefix, "name": key_name, "user": user_name, "admin": admin},
    )
    return row, key


def authenticate(session: Session, presented: str) -> Principal | None:
    prefix = _split(presented)
    row = AuthRepository(session).key_by_prefix(prefix) if prefix else None
    valid = hmac.compare_digest(hash_key(presented), row.key_hash if row else _DUMMY_HASH)
    if row is None or not valid or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > _LAST_USED_RESOLUTION:
        row.last_used_at = now  # coarse, so a busy key does not write on every request
    return Principal(user_id=row.user_id, key_id=row.id, is_admin=row.is_admin)


def list_api_keys(
    session: Session, principal: Principal, *, before: str | None = None, limit: int | None = None
) -> Sequence[ApiKey]:
    """Every key (admins only), newest first: names, prefixes, owners and use; never the keys
    themselves."""
    if not principal.is_admin:
        raise Forbidden("only an admin key may manage API keys")
    return AuthRepository(session).list_keys(before=before, limit=limit)


def revoke_api_key(session: Session, principal: Principal, key_id: str) -> ApiKey:
    """Revoke a key (admins only; audited). A key cannot revoke itself: that would lock its user out
    mid-way. The caller announces the revocation to the auth caches (`api.auth.revocation`)."""
    if not principal.is_admin:
        raise Forbidden("only an admin key may manage API keys")
    row = AuthRepository(session).key_by_id(key_id)
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if row.id == principal.key_id:
        raise Conflict("an API key cannot revoke itself", code="revoke_self")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        record_audit(
            session,
            AuditAction.key_revoke,
            target_kind="api_key",
            target_id=row.id,
            actor_user_id=principal.user_id,
            actor_key_id=principal.key_id,
            detail={"prefix": row.prefix, "name": row.name, "user": row.user.name},
        )
    return row


def issue_api_key(
    session: Session, principal: Principal, *, user_name: str, key_name: str, admin: bool
) -> tuple[ApiKey, str]:
    """Create a key on behalf of an admin; the clear key is returned once and never stored."""
    if not principal.is_admin:
        raise Forbidden("only an admin key may manage API keys")
    user_name, key_name = user_name.strip(), key_name.strip()
    if not 1 <= len(user_name) <= 200:
        raise Unprocessable("user must be 1 to 200 characters", code="validation_error", field="user")
    if not 1 <= len(key_name) <= 200:
        raise Unprocessable("key name must be 1 to 200 characters", code="validation_error", field="name")
    return create_api_key(session, user_name=user_name, key_name=key_name, admin=admin, actor=principal)
