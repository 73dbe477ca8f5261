"""Refreshing the registry's view of jobs: one poll for all of them, one rule for each.

What one CLI process learns (e.g. when a job first went missing) is stored, so the next process
— a later ``hpcnn status``, a cron ``sync`` — reaches the same verdict.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from hpcnn import jobs
from hpcnn.remote.base import Connection
from hpcnn.schedulers.base import Dialect, JobState
from hpcnn.state import JobRow, Registry


def refresh(
    registry: Registry,
    conn: Connection,
    dialect: Dialect,
    rows: Sequence[JobRow],
    *,
    grace: float,
    now: float | None = None,
) -> list[JobRow]:
    """Poll the unfinished submitted jobs among ``rows`` and store their new states."""
    now = time.time() if now is None else now
    live = [r for r in rows if r.scheduler_id and not JobState(r.state).finished]
    if not live:
        return list(rows)
    observations, answered = jobs.poll(conn, dialect, [(r.scheduler_id, r.job_dir) for r in live])
    for row in live:
        verdict = jobs.decide(
            observations[row.scheduler_id],  # type: ignore[index]
            answered=answered,
            previous=JobState(row.state),
            first_missing_at=row.first_missing_at,
            grace=grace,
            now=now,
        )
        registry.update(row.name, state=verdict.state.value, exit_code=verdict.exit_code,
                        detail=verdict.detail, first_missing_at=verdict.first_missing_at)
    names = {r.name for r in rows}
    return [r for r in registry.jobs() if r.name in names]
