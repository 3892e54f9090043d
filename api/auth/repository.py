"""Queries on users and API keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from infra.db.models import ApiKey, User


class AuthRepository:
    def __init__(self, session: Session):
        self.session = session

    def user_by_name(self, name: str) -> User | None:
        return self.session.scalar(select(User).where(User.name == name))

    def add_user(self, name: str) -> User:
        user = User(name=name)
        self.session.add(user)
        self.session.flush()
        return user

    def add_key(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        return key

    def key_by_prefix(self, prefix: str) -> ApiKey | None:
        return self.session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))

    def key_by_id(self, key_id: str) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def list_keys(
        self, *, user_id: str | None = None, before: str | None = None, limit: int | None = None
    ) -> Sequence[ApiKey]:
        """Newest first (ids sort by creation time); `before`: only keys older than that id."""
        stmt = select(ApiKey).options(joinedload(ApiKey.user)).order_by(ApiKey.id.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(ApiKey.user_id == user_id)
        if before is not None:
            stmt = stmt.where(ApiKey.id < before)
        return self.session.scalars(stmt).all()
