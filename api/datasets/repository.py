"""Every dataset query.

The reads of the API (one dataset, a page) are statements built once with bound parameters: an ORM
select built per call has its cache key computed per call too, about a fifth of the cost of
`GET /v1/datasets/{id}` (bench/api_load.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session, defer

from api.auth.service import Principal
from infra.db.models import Dataset


@cache
def _one(owned: bool) -> Select[Dataset]:
    stmt = select(Dataset).where(Dataset.id == bindparam("dataset_id"))
    return stmt.where(Dataset.owner_id == bindparam("owner_id")) if owned else stmt


@cache
def _page(owned: bool, after_cursor: bool) -> Select[Dataset]:
    # The report can be large and the list does not show it.
    stmt = select(Dataset).options(defer(Dataset.report)).order_by(Dataset.id.desc())
    if owned:
        stmt = stmt.where(Dataset.owner_id == bindparam("owner_id"))
    if after_cursor:
        stmt = stmt.where(Dataset.id < bindparam("before"))
    return stmt.limit(bindparam("limit"))


class DatasetRepository:
    def __init__(self, session: Session):
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def id_by_root(self, owner_id: str, root_path: str) -> str | None:
        return self.session.scalar(
            select(Dataset.id).where(Dataset.owner_id == owner_id, Dataset.root_path == root_path)
        )

    def get_visible(self, dataset_id: str, principal: Principal) -> Dataset | None:
        owned = not principal.is_admin
        params = {"dataset_id": dataset_id}
        if owned:
            params["owner_id"] = principal.user_id
        return self.session.scalar(_one(owned), params)

    def list_visible(self, principal: Principal, *, before: str | None, limit: int) -> Sequence[Dataset]:
        owned = not principal.is_admin
        params: dict[str, object] = {"limit": limit}
        if owned:
            params["owner_id"] = principal.user_id
        if before is not None:
            params["before"] = before
        return self.session.scalars(_page(owned, before is not None), params).all()
