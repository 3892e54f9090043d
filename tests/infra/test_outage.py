"""ride_out: a unit of database work retried while the database is unreachable, for a budget."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from infra.db.outage import DatabaseUnavailable, is_connection_error, ride_out
from tests.helpers import services


def _refused() -> OperationalError:
    """The error a real connection attempt to a closed port raises (not a hand-made one)."""
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{services.free_port()}/x")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("a closed port accepted a connection")


def test_connection_errors_are_retried_until_the_database_answers() -> None:
    refused = _refused()
    assert is_connection_error(refused)
    calls: list[int] = []
    pauses: list[float] = []

    def work() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise refused
        return "written"

    assert ride_out(work, budget_s=60, sleep=pauses.append) == "written"
    assert len(calls) == 4
    assert pauses == sorted(pauses) and pauses[0] < pauses[-1]  # backoff grows


def test_an_outage_longer_than_the_budget_raises_database_unavailable() -> None:
    refused = _refused()

    def work() -> None:
        raise refused

    with pytest.raises(DatabaseUnavailable, match="unreachable for more than 0s"):
        ride_out(work, budget_s=0.0, what="event")


def test_other_database_errors_are_raised_at_once() -> None:
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        raise IntegrityError("INSERT ...", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        ride_out(work, budget_s=60)
    assert calls == [1]
