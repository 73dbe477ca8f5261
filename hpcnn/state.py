"""The run registry: one sqlite file per workspace (``.hpcnn/state.db``, WAL).

It is the one place local state lives. Submission records a job's intent before the scheduler
call and its id after, so a crash between the two is visible (``scheduler_id`` empty) and the
next command reconciles it by job name. ``first_missing_at`` remembers when a job left the
scheduler's view without an exit marker, so that "lost" is decided after a grace period even
across CLI processes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    kind TEXT NOT NULL,
    fold INTEGER,
    attempt INTEGER NOT NULL DEFAULT 1,
    job_dir TEXT NOT NULL,
    scheduler TEXT NOT NULL,
    scheduler_id TEXT,
    state TEXT NOT NULL,
    exit_code INTEGER,
    detail TEXT,
    submitted_at REAL,
    updated_at REAL,
    first_missing_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run);
"""


@dataclass
class JobRow:
    name: str
    run: str
    kind: str
    job_dir: str
    scheduler: str
    state: str
    fold: int | None = None
    attempt: int = 1
    scheduler_id: str | None = None
    exit_code: int | None = None
    detail: str | None = None
    submitted_at: float | None = None
    updated_at: float | None = None
    first_missing_at: float | None = None


_COLUMNS = [f.name for f in fields(JobRow)]


class Registry:
    """Jobs of a workspace. Each method is one short transaction; safe across processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    def add(self, job: JobRow) -> None:
        """Record a job (usually state ``pending``, before it is submitted)."""
        job.updated_at = time.time()
        with self._db() as db:
            db.execute(
                f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(_COLUMNS))})",
                [getattr(job, c) for c in _COLUMNS],
            )

    def update(self, name: str, **changes: object) -> None:
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"unknown job fields {sorted(unknown)}")
        changes["updated_at"] = time.time()
        with self._db() as db:
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in changes)} WHERE name = ?",
                [*changes.values(), name],
            )

    def get(self, name: str) -> JobRow | None:
        rows = self._select("WHERE name = ?", [name])
        return rows[0] if rows else None

    def jobs(self, run: str | None = None) -> list[JobRow]:
        if run is None:
            return self._select("ORDER BY submitted_at, name", [])
        return self._select("WHERE run = ? ORDER BY fold, attempt, name", [run])

    def _select(self, where: str, args: list[object]) -> list[JobRow]:
        with self._db() as db:
            cur = db.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs {where}", args)
            return [JobRow(**dict(zip(_COLUMNS, row, strict=True))) for row in cur.fetchall()]
