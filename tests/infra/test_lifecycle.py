"""The run state machine: its statuses and stages agree with the pipeline's, every status has its
transitions and events, and `transition` changes a run and appends its event in one step (on
PostgreSQL), or changes nothing when the run moved on."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from infra.db.models import Run
from infra.runs.lifecycle import (
    ACTIVE,
    CLAIMABLE,
    EVENT_TYPES,
    RESUMABLE,
    STAGE_WEIGHTS,
    STAGES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    RunStatus,
    overall_progress,
    transition,
)
from mbpo_core.pipeline import stages as pipeline
from tests.helpers.rows import make_run, owner_and_model, run_state


def test_the_stages_are_the_pipelines_stages_in_order() -> None:
    assert [s.value for s in STAGES] == list(pipeline.STAGES)
    assert set(pipeline.STAGE_FUNCTIONS) == set(pipeline.STAGES)
    assert set(STAGE_WEIGHTS) == set(STAGES)


def test_every_status_has_its_transitions_and_every_target_its_event() -> None:
    assert set(TRANSITIONS) == set(RunStatus)
    targets = {to for tos in TRANSITIONS.values() for to in tos}
    assert targets <= set(EVENT_TYPES)
    assert set(RunStatus) == ACTIVE | TERMINAL and not ACTIVE & TERMINAL
    assert not TRANSITIONS[RunStatus.succeeded]
    assert all(TRANSITIONS[s] == {RunStatus.queued} for s in RESUMABLE)
    assert {RunStatus.queued, *STAGES} == CLAIMABLE
    # Every active status can fail and be cancelled; every status can be reached from `queued`.
    assert all(RunStatus.failed in TRANSITIONS[s] for s in ACTIVE)
    reachable, frontier = {RunStatus.queued}, [RunStatus.queued]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(RunStatus)


def test_overall_progress_weights_the_stages() -> None:
    assert overall_progress({}) == 0.0
    assert overall_progress({s: 1.0 for s in STAGES}) == 1.0
    assert overall_progress({RunStatus.training: 1.0}) == pytest.approx(0.45)


def test_an_illegal_transition_is_refused_before_touching_the_database() -> None:
    with pytest.raises(IllegalTransition, match="succeeded to queued"):
        transition(None, "r", RunStatus.queued, sources={RunStatus.succeeded}, message="")  # type: ignore[arg-type]


def test_transition_writes_the_status_and_its_event_or_nothing(pg_factory: sessionmaker[Session]) -> None:
    owner, model = owner_and_model(pg_factory)
    run_id = make_run(pg_factory, owner, model, status=RunStatus.queued, lease_owner="w1")

    with pg_factory.begin() as session:
        event = transition(
            session,
            run_id,
            RunStatus.scoring,
            sources=CLAIMABLE,
            when=[Run.lease_owner == "w1"],
            values={"stage_progress": {"scoring": 0.0}},
            message="scoring started",
        )
        assert event is not None and event.type == "stage_started" and event.stage == "scoring"
    run, events = run_state(pg_factory, run_id)
    assert (run.status, run.stage, run.stage_progress) == ("scoring", "scoring", {"scoring": 0.0})
    assert events == ["stage_started"]

    # Another worker's lease, then a status the run is no longer in: nothing changes.
    with pg_factory.begin() as session:
        stale = [Run.lease_owner == "w2"]
        assert (
            transition(session, run_id, RunStatus.mining, sources=CLAIMABLE, when=stale, message="") is None
        )
        assert transition(session, run_id, RunStatus.queued, sources=RESUMABLE, message="") is None
    run, events = run_state(pg_factory, run_id)
    assert run.status == "scoring" and events == ["stage_started"]

    with pg_factory.begin() as session:
        failed = transition(
            session, run_id, RunStatus.failed, sources=ACTIVE, message="boom", data={"error_code": "x"}
        )
        assert failed is not None and failed.level == "error" and failed.data == {"error_code": "x"}
    run, events = run_state(pg_factory, run_id)
    assert run.status == "failed" and events == ["stage_started", "run_failed"]
