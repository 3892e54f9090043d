"""Rows for tests that talk to the database directly: a user with a base model, a run, and a run's
state with the types of its events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra.db.base import utcnow
from infra.db.models import BaseModelRecord, Run, RunEvent, User


def owner_and_model(factory: sessionmaker[Session]) -> tuple[str, str]:
    with factory.begin() as session:
        user = User(name=f"sweeper-{utcnow().timestamp()}")
        session.add(user)
        session.flush()
        model = BaseModelRecord(
            owner_id=user.id, name="m", path="/m", family="qwen2_vl", model_type="qwen2_vl", param_count=1
        )
        session.add(model)
        session.flush()
        return user.id, model.id


def make_run(factory: sessionmaker[Session], owner: str, model: str, **values: Any) -> str:
    with factory.begin() as session:
        run = Run(
            owner_id=owner, base_model_id=model, name="r", config={}, stage_progress={}, latest_metrics={}
        )
        for key, value in values.items():
            setattr(run, key, value)
        session.add(run)
        session.flush()
        return run.id


def run_state(factory: sessionmaker[Session], run_id: str) -> tuple[Run, list[str]]:
    with factory() as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run)
        types = list(
            session.scalars(select(RunEvent.type).where(RunEvent.run_id == run_id).order_by(RunEvent.seq))
        )
        return run, types
