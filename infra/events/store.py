"""The run event log: append with a gap-free per-run `seq`, read after a `seq`.

`append_event` takes the next number from `runs.event_seq` with an `UPDATE ... RETURNING` in the
caller's transaction. The row lock it takes is held until that transaction ends, so two writers
of one run (worker, API cancel, sweeper) are serialised and their events commit in `seq` order:
a reader that has seen `seq` n and finds n+2 knows n+1 is not merely late, it is absent, which
never happens. Publishing happens after the commit (see `infra.events.publish`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from infra.db.models import Run, RunEvent


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats (NaN, inf: a metric of an empty group) replaced by None, so it
    is valid JSON for clients and for PostgreSQL's JSONB."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def append_event(
    session: Session,
    run_id: str,
    type: str,
    message: str = "",
    *,
    stage: str | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> RunEvent:
    """Add an event in the session's transaction (not committed here)."""
    seq = session.execute(
        update(Run).where(Run.id == run_id).values(event_seq=Run.event_seq + 1).returning(Run.event_seq),
        execution_options={"synchronize_session": False},
    ).scalar_one()
    event = RunEvent(
        run_id=run_id,
        seq=seq,
        type=type,
        stage=stage,
        level=level,
        message=message,
        data=json_safe(data or {}),
    )
    session.add(event)
    session.flush()
    return event


def events_after(session: Session, run_id: str, after: int, limit: int = 1000) -> Sequence[RunEvent]:
    stmt = (
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.seq > after)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def event_payload(event: RunEvent) -> dict[str, Any]:
    """The JSON form of an event: the REST list, the SSE `data:` and the pub/sub message."""
    created: datetime = event.created_at
    return {
        "run_id": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "stage": event.stage,
        "level": event.level,
        "message": event.message,
        "data": event.data,
        "created_at": created.isoformat(),
    }
