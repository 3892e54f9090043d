"""Queries on users and API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import ApiKey, User


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
