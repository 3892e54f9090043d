"""The job outbox (infra.outbox) on PostgreSQL and SQLite: jobs are sent in order and deleted, a
failed send keeps its job and error, two senders never send the same job, and a request's jobs
exist exactly when its transaction committed (JobQueue)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from infra import outbox
from infra.db.migrate import upgrade_to_head
from infra.db.models import OutboxJob
from infra.db.session import make_engine, make_session_factory
from infra.jobs import JobQueue, TaskName
from tests.helpers.services import free_port


@pytest.fixture(params=["postgresql", "sqlite"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        url = request.getfixturevalue("committed_db")
    else:
        url = f"sqlite:///{tmp_path / 'mbpo.db'}"
        upgrade_to_head(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory.begin() as session:  # the PostgreSQL database is shared by the module
        session.query(OutboxJob).delete()
    yield factory
    engine.dispose()


def _add(factory: sessionmaker[Session], *names: str) -> list[int]:
    with factory.begin() as session:
        return [outbox.add(session, name, [f"id-{name}"]) for name in names]


def _rows(factory: sessionmaker[Session]) -> list[tuple[str, int, str | None]]:
    with factory() as session:
        rows = session.scalars(select(OutboxJob).order_by(OutboxJob.id)).all()
        return [(r.name, r.attempts, r.last_error) for r in rows]


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.sent: list[tuple[str, list[str]]] = []
        self.fail_on = fail_on

    def __call__(self, name: str, args: list[str]) -> None:
        if name == self.fail_on:
            raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append((name, args))


def test_jobs_are_sent_in_order_and_deleted(factory: sessionmaker[Session]) -> None:
    _add(factory, "a", "b", "c")
    send = Recorder()
    with factory() as session:
        result = outbox.send_jobs(session, send)
    assert result == outbox.SendResult(sent=3)
    assert send.sent == [("a", ["id-a"]), ("b", ["id-b"]), ("c", ["id-c"])]
    assert _rows(factory) == []


def test_only_the_named_jobs_are_sent(factory: sessionmaker[Session]) -> None:
    a, _, c = _add(factory, "a", "b", "c")
    send = Recorder()
    with factory() as session:
        assert outbox.send_jobs(session, send, [c, a]).sent == 2
        assert outbox.send_jobs(session, send, []).sent == 0
    assert [name for name, _ in send.sent] == ["a", "c"]
    assert _rows(factory) == [("b", 0, None)]


def test_a_failed_send_keeps_the_job_and_its_error_then_the_relay_sends_it(
    factory: sessionmaker[Session],
) -> None:
    _add(factory, "a", "b", "c")
    down = Recorder(fail_on="b")
    with factory() as session:
        result = outbox.send_jobs(session, down)
    assert (result.sent, result.failed) == (1, 1) and "Connection refused" in (result.error or "")
    # a is gone; b was tried once and keeps the error; c was not tried (the broker is down)
    rows = _rows(factory)
    assert [(name, attempts) for name, attempts, _ in rows] == [("b", 1), ("c", 0)]
    assert rows[0][2] is not None and rows[0][2].startswith("OperationalError: Error 111")
    assert rows[1][2] is None

    back = Recorder()
    assert outbox.relay_once(factory, back) == outbox.SendResult(sent=2)
    assert [name for name, _ in back.sent] == ["b", "c"]
    assert _rows(factory) == []


def test_the_relay_drains_more_than_one_batch(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "BATCH", 2)
    _add(factory, *"abcde")
    send = Recorder()
    assert outbox.relay_once(factory, send).sent == 5
    assert [name for name, _ in send.sent] == list("abcde")


def test_two_senders_never_send_the_same_job(factory: sessionmaker[Session]) -> None:
    """The first sender holds its claim while it sends (blocked here); the second one meanwhile
    takes nothing it holds: PostgreSQL skips the locked rows, SQLite waits for the writer and then
    finds them deleted. Every job is sent exactly once."""
    _add(factory, "a", "b")
    inside, release = threading.Event(), threading.Event()
    first_sent: list[str] = []

    def slow_send(name: str, args: list[str]) -> None:
        inside.set()
        assert release.wait(30)
        first_sent.append(name)

    def first() -> None:
        with factory() as session:
            outbox.send_jobs(session, slow_send)

    second = Recorder()
    second_done = threading.Event()

    def run_second() -> None:
        outbox.relay_once(factory, second)
        second_done.set()

    t1 = threading.Thread(target=first)
    t1.start()
    assert inside.wait(30)
    t2 = threading.Thread(target=run_second)
    t2.start()
    if factory.kw["bind"].dialect.name == "postgresql":
        assert second_done.wait(30)  # not blocked by the first sender's locks
        assert second.sent == []
    release.set()
    t1.join(30)
    t2.join(30)
    assert second_done.is_set()
    assert sorted(first_sent + [name for name, _ in second.sent]) == ["a", "b"]
    assert first_sent == ["a", "b"]
    assert _rows(factory) == []


def test_a_request_s_jobs_exist_only_if_its_transaction_commits(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        jobs = JobQueue(session)
        jobs.enqueue(TaskName.execute_run, "run_1")
        session.rollback()
        jobs.discard()
    assert _rows(factory) == [] and not jobs.pending

    with factory() as session:
        jobs = JobQueue()
        with pytest.raises(RuntimeError, match="bind"):
            jobs.enqueue(TaskName.execute_run, "run_2")
        jobs.bind(session)
        jobs.enqueue(TaskName.validate_dataset, "ds_1")
        session.commit()
    assert _rows(factory) == [(TaskName.validate_dataset.value, 0, None)]


def test_after_the_commit_a_refused_send_leaves_the_job_and_the_request_succeeds(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    from infra.jobs import create_celery
    from infra.settings import Settings

    unreachable = create_celery(
        Settings(env="test", home=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    )
    hooks: list[str] = []
    with factory() as session:
        jobs = JobQueue(session)
        jobs.enqueue(TaskName.execute_run, "run_1")
        jobs.after_commit(lambda: hooks.append("published"))
        session.commit()
        jobs.send(unreachable)  # logs, never raises
    assert hooks == ["published"]
    [(name, attempts, error)] = _rows(factory)
    assert (name, attempts) == (TaskName.execute_run.value, 1)
    assert error is not None and "OperationalError" in error
