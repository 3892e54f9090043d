"""The Alembic history matches the models (no drift) on PostgreSQL and runs on SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect

from infra.db.base import Base
from infra.db.migrate import alembic_config, upgrade_to_head
from tests.helpers import services


def test_no_drift_on_postgres_and_downgrade_works() -> None:
    with services.fresh_database() as url:
        config = alembic_config(url)
        command.check(config)  # raises if autogenerate would emit any operation
        command.downgrade(config, "base")
        engine = create_engine(url)
        try:
            assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        finally:
            engine.dispose()
        command.upgrade(config, "head")


def test_migrations_run_on_sqlite_without_drift(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mbpo.db'}"
    upgrade_to_head(url)
    command.check(alembic_config(url))
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert {
        "users",
        "api_keys",
        "base_models",
        "datasets",
        "runs",
        "run_events",
        "artefacts",
        "checkpoints",
    } <= tables


def test_run_tables_carry_what_the_run_lifecycle_needs() -> None:
    runs = Base.metadata.tables["runs"].columns
    for column in (
        "status",
        "stage",
        "attempt",
        "max_attempts",
        "lease_owner",
        "lease_expires_at",
        "heartbeat_at",
        "progress",
        "stage_progress",
        "error_code",
        "error_message",
        "config",
        "idempotency_key",
        "request_hash",
        "cancel_requested_at",
    ):
        assert column in runs, column
    constraints = {tuple(c.columns.keys()) for c in Base.metadata.tables["run_events"].constraints if c.name}
    assert ("run_id", "seq") in constraints
