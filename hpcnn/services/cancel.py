"""``hpcnn cancel``: a run's jobs through the scheduler, queued continuations included (an
``afterany`` continuation would otherwise start once the attempt before it is cancelled)."""

from __future__ import annotations

from hpcnn.jobs import engine
from hpcnn.jobs.model import Run
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.state import JobRow


def live_jobs(session: Session, run_id: str | None = None,
              folds: list[int] | None = None) -> tuple[Run, list[JobRow]]:
    """The run's jobs that are still queued or running as last recorded (of ``folds`` only,
    when given): what a cancel would act on, known before the user is asked to confirm."""
    run, _ = session.find_run(run_id)
    rows = [r for r in session.registry.jobs(run.id)
            if r.scheduler_id and not JobState(r.state).finished
            and (folds is None or r.fold in folds)]
    return run, rows


def cancel_jobs(session: Session, rows: list[JobRow]) -> None:
    """Cancel ``rows`` in ONE scheduler call, and record it."""
    engine.cancel(session.conn, session.dialect, [r.scheduler_id or "" for r in rows])
    for row in rows:
        session.registry.update(row.name, state=JobState.CANCELLED.value,
                                detail="cancelled with hpcnn cancel")
