"""The run state machine: statuses, stages, which status may follow which, and the one function that
changes a run's status together with its event.

    queued -> validating -> scoring -> mining -> training -> evaluating -> succeeded
    any active status -> failed;  any active status -> cancelling -> cancelled
    queued or a stage, when no worker holds the run -> cancelled
    failed | cancelled -> queued (resume)

The stage statuses are the names of `mbpo_core.pipeline.stages.STAGES` (a test checks they
agree). A worker that takes over a run re-enters the stages from the first one (finished stages
return their saved result at once), so any stage may follow any stage.

Every status change is `transition()`: a conditional UPDATE (the run must still be in one of the
expected statuses, plus the caller's conditions such as "this worker holds the lease") and the
matching event appended in the same transaction, so a reader that sees the event sees the new
state. The caller commits, then publishes the events (`infra.events.publish.commit_and_publish`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from infra.db.models import Run, RunEvent
from infra.events.store import append_event


class RunStatus(StrEnum):
    queued = "queued"
    validating = "validating"
    scoring = "scoring"
    mining = "mining"
    training = "training"
    evaluating = "evaluating"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


# The stages of a run, in order; a run in a stage has that stage as its status.
STAGES: tuple[RunStatus, ...] = (
    RunStatus.validating,
    RunStatus.scoring,
    RunStatus.mining,
    RunStatus.training,
    RunStatus.evaluating,
)
CANCELS = (RunStatus.cancelling, RunStatus.cancelled)
TERMINAL = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled})
ACTIVE = frozenset(RunStatus) - TERMINAL
RESUMABLE = frozenset({RunStatus.failed, RunStatus.cancelled})
# A worker may (re)claim a run while queued or in a stage: a stage status with an expired lease
# means the previous worker died there and the pipeline continues from what it left.
CLAIMABLE = frozenset({RunStatus.queued, *STAGES})

# Which status may follow which. A worker finishing a run it was asked to cancel may still record
# the outcome it reached (the last step completed, or it crashed) instead of `cancelled`.
TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    RunStatus.queued: frozenset({*STAGES, RunStatus.failed, RunStatus.cancelling, RunStatus.cancelled}),
    **{
        stage: frozenset(
            {*STAGES, RunStatus.succeeded, RunStatus.failed, RunStatus.cancelling, RunStatus.cancelled}
        )
        for stage in STAGES
    },
    RunStatus.cancelling: frozenset({RunStatus.cancelled, RunStatus.failed, RunStatus.succeeded}),
    RunStatus.succeeded: frozenset(),
    RunStatus.failed: frozenset({RunStatus.queued}),
    RunStatus.cancelled: frozenset({RunStatus.queued}),
}

# The event each transition appends, by the status it leads to.
EVENT_TYPES: Mapping[RunStatus, str] = {
    RunStatus.queued: "run_resumed",
    **{stage: "stage_started" for stage in STAGES},
    RunStatus.succeeded: "run_succeeded",
    RunStatus.failed: "run_failed",
    RunStatus.cancelling: "cancel_requested",
    RunStatus.cancelled: "run_cancelled",
}

# Event types after which a run does nothing more (until someone resumes it).
TERMINAL_EVENT_TYPES = frozenset(EVENT_TYPES[s] for s in TERMINAL)

# Share of the overall progress each stage represents (rough CPU/GPU time of a typical run).
STAGE_WEIGHTS: Mapping[str, float] = {
    RunStatus.validating: 0.02,
    RunStatus.scoring: 0.13,
    RunStatus.mining: 0.25,
    RunStatus.training: 0.45,
    RunStatus.evaluating: 0.15,
}


class IllegalTransition(ValueError):
    """A programming error: the code asked for a status change the state machine does not allow."""


def overall_progress(stage_progress: Mapping[str, float]) -> float:
    """The run's progress in [0, 1] from each stage's own fraction, weighted by `STAGE_WEIGHTS`."""
    total = sum(STAGE_WEIGHTS.values())
    return round(sum(w * stage_progress.get(s, 0.0) for s, w in STAGE_WEIGHTS.items()) / total, 4)


def check_transition(sources: Collection[RunStatus], to: RunStatus) -> None:
    illegal = sorted(s for s in sources if to not in TRANSITIONS[s])
    if illegal:
        raise IllegalTransition(f"a run cannot go from {', '.join(illegal)} to {to}")


def update_run(session: Session, run_id: str, conditions: Sequence[Any], values: Mapping[str, Any]) -> bool:
    """A conditional UPDATE of one run in the session's transaction; True when it matched."""
    result = session.execute(
        update(Run).where(Run.id == run_id, *conditions).values(**values),
        execution_options={"synchronize_session": False},
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def transition(
    session: Session,
    run_id: str,
    to: RunStatus,
    *,
    sources: Collection[RunStatus],
    message: str,
    when: Sequence[Any] = (),
    values: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    event_type: str | None = None,
    level: str | None = None,
) -> RunEvent | None:
    """Move run `run_id` to `to` if its status is one of `sources` and every condition of `when`
    holds, writing `values` and appending the event (`EVENT_TYPES[to]` unless `event_type` names
    another) in the session's transaction. Returns the event, or None when the run was not in that
    state any more (nothing is written then; the caller decides what that means).

    Raises IllegalTransition when a source may not lead to `to`: that is a bug, not a race."""
    check_transition(sources, to)
    stage = to if to in STAGES else None
    changes = {"status": to, **({"stage": stage} if stage else {}), **(values or {})}
    if not update_run(session, run_id, [Run.status.in_(list(sources)), *when], changes):
        return None
    return append_event(
        session,
        run_id,
        event_type or EVENT_TYPES[to],
        message,
        stage=stage,
        level=level or ("error" if to == RunStatus.failed else "info"),
        data=dict(data or {}),
    )


def release_lease(
    session: Session,
    run_id: str,
    when: Sequence[Any],
    *,
    event_type: str,
    message: str,
    data: Mapping[str, Any],
    refund_attempt: bool = False,
    level: str = "warning",
) -> RunEvent | None:
    """Free the run's lease so another worker continues it from where it stopped; its status is
    unchanged (the stage it was in). `refund_attempt` gives the attempt back (a graceful stop is
    not a failure). Returns the event, or None when `when` no longer holds."""
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "eta_seconds": None}
    if refund_attempt:
        values["attempt"] = Run.attempt - 1
    if not update_run(session, run_id, when, values):
        return None
    return append_event(session, run_id, event_type, message, level=level, data=dict(data))


def release_for_retry(
    session: Session, run_id: str, when: Sequence[Any], *, attempt: int, max_attempts: int
) -> RunEvent | None:
    """The run's worker is gone (its lease expired): another worker continues it."""
    return release_lease(
        session,
        run_id,
        when,
        event_type="run_requeued",
        message=f"worker lost during attempt {attempt}; re-queued",
        data={"attempt": attempt, "max_attempts": max_attempts},
    )
