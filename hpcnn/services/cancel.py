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
    when given): what a cancel would act on, known before the user is asked to confirm.
    Without ``--run``: every run of the most recent experiment, and the experiment's own jobs
    (preprocessing, find_best)."""
    pairs = session.experiment_runs(run_id)
    run, row = pairs[0]
    owners = [r.id for r, _ in pairs]
    if run_id is None and row.experiment and row.experiment not in owners:
        owners.append(row.experiment)
    rows = [r for owner in owners for r in session.registry.jobs(owner)
            if r.scheduler_id and not JobState(r.state).finished
            and (folds is None or r.fold in folds)]
    return run, rows


def cancel_jobs(session: Session, rows: list[JobRow]) -> None:
    """Cancel ``rows`` in ONE scheduler call, and record it."""
    engine.cancel_rows(session.registry, session.conn, session.dialect, rows)
