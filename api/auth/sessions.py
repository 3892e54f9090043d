"""Browser sessions of the admin UI: an API key exchanged for a signed session cookie, and the CSRF
tokens that every state-changing request made with that cookie must carry.

The cookie holds no secret: `<key id>.<nonce>.<expiry>.<HMAC>`. Each request re-reads the key row,
so revoking the key ends its sessions at once. The CSRF token is an HMAC of the session nonce
(synchroniser token without server state); the login form, which has no session yet, uses a
double-submit cookie instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from api.auth.repository import AuthRepository
from api.auth.service import Principal
from infra.db.models import ApiKey
from infra.settings import Settings

SESSION_COOKIE = "mbpo_session"
LOGIN_CSRF_COOKIE = "mbpo_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SECRET_FILE = "session_secret"


def load_secret(settings: Settings) -> bytes:
    """The signing key: the configured one, else a random one kept in MBPO_HOME (created once,
    mode 0600; O_EXCL so concurrent first starts agree on one)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    path: Path = settings.home_dir / _SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    for _ in range(50):  # another process may be between creating and writing the file
        value = path.read_text().strip()
        if value:
            return value.encode()
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty")


def _sign(secret: bytes, purpose: str, payload: str) -> str:
    mac = hmac.new(secret, f"{purpose}|{payload}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


@dataclass(frozen=True)
class BrowserSession:
    key_id: str
    nonce: str
    expires_at: int

    def csrf_token(self, secret: bytes) -> str:
        return _sign(secret, "csrf", self.nonce)


def issue_session(secret: bytes, key_id: str, *, now: float | None = None) -> tuple[BrowserSession, str]:
    """A new session for API key `key_id`: the session and its cookie value."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    session = BrowserSession(key_id=key_id, nonce=secrets.token_urlsafe(16), expires_at=expires)
    payload = f"{key_id}.{session.nonce}.{expires}"
    return session, f"{payload}.{_sign(secret, 'session', payload)}"


def read_session(secret: bytes, cookie: str | None, *, now: float | None = None) -> BrowserSession | None:
    """The session a cookie value carries, or None when it is malformed, forged or expired."""
    if not cookie or len(cookie) > 512:
        return None
    payload, _, signature = cookie.rpartition(".")
    parts = payload.split(".")
    if len(parts) != 3 or not hmac.compare_digest(signature, _sign(secret, "session", payload)):
        return None
    key_id, nonce, expires = parts
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    return BrowserSession(key_id=key_id, nonce=nonce, expires_at=int(expires))


def csrf_matches(secret: bytes, session: BrowserSession, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(str(presented), session.csrf_token(secret))


def session_key(db: Session, session: BrowserSession) -> ApiKey | None:
    """The API key behind a session; None once it is revoked or deleted."""
    row = AuthRepository(db).key_by_id(session.key_id)
    if row is None or row.revoked_at is not None:
        return None
    return row


def session_principal(db: Session, session: BrowserSession) -> Principal | None:
    row = session_key(db, session)
    return None if row is None else Principal(user_id=row.user_id, key_id=row.id, is_admin=row.is_admin)
