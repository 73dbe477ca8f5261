"""``hpcnn cancel``: a run's jobs through the scheduler, queued continuations included (an
``afterany`` continuation would otherwise start once the attempt before it is cancelled)."""

from __future__ import annotations

from hpcnn.jobs import engine
from hpcnn.jobs.model import Run
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.state import JobRow


def cancel_run(session: Session, run_id: str | None = None,
               folds: list[int] | None = None) -> tuple[Run, list[JobRow]]:
    """Cancel every unfinished job of the run (of ``folds`` only, when given) in ONE scheduler
    call, and record it; returns the run and the jobs cancelled. Without ``--run``: every run
    of the most recent experiment, and its own jobs (preprocessing, find_best)."""
    pairs = session.experiment_runs(run_id)
    run, row = pairs[0]
    owners = [r.id for r, _ in pairs]
    if run_id is None and row.experiment and row.experiment not in owners:
        owners.append(row.experiment)
    rows = [r for owner in owners for r in session.registry.jobs(owner)
            if r.scheduler_id and not JobState(r.state).finished
            and (folds is None or r.fold in folds)]
    engine.cancel_rows(session.registry, session.conn, session.dialect, rows)
    return run, rows
