"""Fixtures every test package may use.

`committed_db`: a fresh, migrated PostgreSQL database per test module whose data is committed (a
worker process or a second connection must see it); `pg_factory`: sessions on it.
`tiny`: a tiny random Qwen2-VL with a LoRA adapter and its merged checkpoint (inference tests).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from infra.db.session import make_engine, make_session_factory
from tests.helpers import services
from tests.helpers.inference import TinyModels, build_tiny_models


@pytest.fixture(scope="module")
def committed_db() -> Iterator[str]:
    with services.fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def pg_factory(committed_db: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(committed_db)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    import torch

    torch.set_num_threads(1)
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))
