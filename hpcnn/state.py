"""The registry: one sqlite file per workspace (``.hpcnn/state.db``, WAL, a schema version).

It is the one place local state lives: runs, their jobs (one row per attempt), dependencies
between jobs, transfers, and what ``hpcnn doctor`` learnt about each cluster. Submission records
a job's intent before the scheduler call and its id after, so a crash between the two is visible
(``scheduler_id`` empty) and the next command reconciles it by job name; recording intent again
never touches a job that was submitted, and nothing erases a stored exit code.
``first_missing_at`` remembers when a job left the scheduler's view without an exit marker, so
that "lost" is decided after a grace period even across CLI processes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

_V1_JOBS = """
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

_V2 = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    trainer TEXT NOT NULL,
    plans TEXT NOT NULL,
    configuration TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS dependencies (
    job TEXT NOT NULL,
    on_job TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (job, on_job)
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT,
    direction TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    files INTEGER,
    bytes INTEGER,
    started_at REAL NOT NULL,
    finished_at REAL,
    ok INTEGER
);
CREATE TABLE IF NOT EXISTS cluster_facts (
    host TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (host, key)
);
"""


_V3 = """
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    trainer TEXT NOT NULL,
    plans TEXT NOT NULL,
    configurations TEXT NOT NULL,
    folds TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    options TEXT NOT NULL DEFAULT '{}'
);
"""
_V3_COLUMNS = (("runs", "experiment"), ("dependencies", "on_name"))
"""Version 3: experiments (an experiment groups the runs of its configurations; a run of
version 2 becomes the one run of its own experiment) and the NAME of the job a dependency waits
for (the scheduler id alone does not say which fold a cascade fold waits on)."""


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


@dataclass
class RunRow:
    id: str
    dataset: str
    trainer: str
    plans: str
    configuration: str
    created_at: float
    host: str = ""
    options: str = "{}"
    experiment: str | None = None

    @property
    def option_values(self) -> dict[str, Any]:
        return json.loads(self.options or "{}")


@dataclass
class ExperimentRow:
    id: str
    dataset: str
    trainer: str
    plans: str
    configurations: str
    """JSON list, in training order."""
    folds: str
    """JSON list."""
    created_at: float
    host: str = ""
    options: str = "{}"

    @property
    def configuration_list(self) -> list[str]:
        return list(json.loads(self.configurations))

    @property
    def fold_list(self) -> list[int]:
        return [int(f) for f in json.loads(self.folds)]


_COLUMNS = [f.name for f in fields(JobRow)]
_RUN_COLUMNS = [f.name for f in fields(RunRow)]
_EXPERIMENT_COLUMNS = [f.name for f in fields(ExperimentRow)]


class Registry:
    """A workspace's state. Each method is one short transaction; safe across processes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        with self._db() as db:
            migrate(db)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    # ---- runs
    def add_run(self, run: RunRow) -> RunRow:
        """Record a run once; the first record (its creation time, options) is kept."""
        with self._db() as db:
            db.execute(
                f"INSERT OR IGNORE INTO runs ({','.join(_RUN_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(_RUN_COLUMNS))})",
                [getattr(run, c) for c in _RUN_COLUMNS],
            )
        found = self.run(run.id)
        assert found is not None
        return found

    def add_experiment(self, experiment: ExperimentRow, runs: Sequence[RunRow]) -> ExperimentRow:
        """Record an experiment and its runs once (the first records are kept); a run recorded
        before (by an experiment of its own) joins this one."""
        with self._db() as db:
            db.execute(
                f"INSERT OR IGNORE INTO experiments ({','.join(_EXPERIMENT_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(_EXPERIMENT_COLUMNS))})",
                [getattr(experiment, c) for c in _EXPERIMENT_COLUMNS])
            for run in runs:
                run.experiment = experiment.id
                db.execute(
                    f"INSERT OR IGNORE INTO runs ({','.join(_RUN_COLUMNS)}) "
                    f"VALUES ({','.join('?' * len(_RUN_COLUMNS))})",
                    [getattr(run, c) for c in _RUN_COLUMNS])
                db.execute("UPDATE runs SET experiment = ? WHERE id = ?",
                           [experiment.id, run.id])
        found = self.experiment(experiment.id)
        assert found is not None
        return found

    def experiment(self, experiment_id: str) -> ExperimentRow | None:
        with self._db() as db:
            row = db.execute(f"SELECT {','.join(_EXPERIMENT_COLUMNS)} FROM experiments "
                             "WHERE id = ?", [experiment_id]).fetchone()
        return ExperimentRow(**dict(zip(_EXPERIMENT_COLUMNS, row, strict=True))) if row else None

    def experiment_runs(self, experiment_id: str) -> list[RunRow]:
        """The runs of an experiment, in the order they were recorded."""
        return self._runs("WHERE experiment = ? ORDER BY created_at, rowid", [experiment_id])

    def run(self, run_id: str) -> RunRow | None:
        rows = self._runs("WHERE id = ?", [run_id])
        return rows[0] if rows else None

    def runs(self) -> list[RunRow]:
        """Every run, the most recent first."""
        return self._runs("ORDER BY created_at DESC, id", [])

    def _runs(self, where: str, args: list[object]) -> list[RunRow]:
        with self._db() as db:
            cur = db.execute(f"SELECT {','.join(_RUN_COLUMNS)} FROM runs {where}", args)
            return [RunRow(**dict(zip(_RUN_COLUMNS, r, strict=True))) for r in cur.fetchall()]

    # ---- jobs
    def add(self, job: JobRow,
            depends_on: Sequence[tuple[str, str] | tuple[str, str, str]] = ()) -> JobRow:
        """Record a job's intent (state ``pending``) with its dependencies ``(scheduler id,
        kind)`` or ``(scheduler id, kind, job name)``.

        A job of that name already recorded is left exactly as it is (it may have been
        submitted: its scheduler id must survive); the stored row is returned.
        """
        job.updated_at = time.time()
        with self._db() as db:
            db.execute(
                f"INSERT OR IGNORE INTO jobs ({','.join(_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(_COLUMNS))})",
                [getattr(job, c) for c in _COLUMNS],
            )
            db.executemany(
                "INSERT OR IGNORE INTO dependencies (job, on_job, kind, on_name) "
                "VALUES (?, ?, ?, ?)",
                [(job.name, dep[0], dep[1], dep[2] if len(dep) > 2 else None)
                 for dep in depends_on])
        stored = self.get(job.name)
        assert stored is not None
        return stored

    def update(self, name: str, **changes: object) -> None:
        """Change a job's fields; an exit code once stored is never replaced by None."""
        self.update_many([(name, changes)])

    def update_many(self, updates: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        """``update`` for many jobs in ONE transaction: each commit waits for the disk, so a
        status of a 100-job run stored job by job spent seconds in fsync alone."""
        now = time.time()
        statements = []
        for name, changes in updates:
            unknown = set(changes) - set(_COLUMNS)
            if unknown:
                raise KeyError(f"unknown job fields {sorted(unknown)}")
            values = {**changes, "updated_at": now}
            sets = [f"{k} = COALESCE(?, {k})" if k == "exit_code" else f"{k} = ?"
                    for k in values]
            statements.append((f"UPDATE jobs SET {', '.join(sets)} WHERE name = ?",
                               [*values.values(), name]))
        if not statements:
            return
        with self._db() as db:
            for sql, args in statements:
                db.execute(sql, args)

    def forget(self, name: str) -> None:
        """Remove a job that was never submitted (its intent was refused by the scheduler)."""
        with self._db() as db:
            db.execute("DELETE FROM jobs WHERE name = ? AND scheduler_id IS NULL", [name])
            db.execute("DELETE FROM dependencies WHERE job = ?", [name])

    def get(self, name: str) -> JobRow | None:
        rows = self._select("WHERE name = ?", [name])
        return rows[0] if rows else None

    def jobs(self, run: str | None = None) -> list[JobRow]:
        if run is None:
            return self._select("ORDER BY submitted_at, name", [])
        return self._select("WHERE run = ? ORDER BY fold, attempt, name", [run])

    def dependencies(self, name: str) -> list[tuple[str, str]]:
        with self._db() as db:
            return [tuple(r) for r in db.execute(
                "SELECT on_job, kind FROM dependencies WHERE job = ? ORDER BY on_job", [name])]

    def needed_jobs(self, name: str) -> list[tuple[str, str]]:
        """``(job name, kind)`` of what a job waits for (the names recorded since v3)."""
        with self._db() as db:
            return [tuple(r) for r in db.execute(
                "SELECT on_name, kind FROM dependencies WHERE job = ? AND on_name IS NOT NULL "
                "ORDER BY on_name", [name])]

    def run_dependencies(self, run: str) -> dict[str, list[tuple[str, str]]]:
        """``dependencies`` of every job of ``run`` that has one, in one query (a status of
        a 100-job run must not open the database 100 times)."""
        found: dict[str, list[tuple[str, str]]] = {}
        with self._db() as db:
            for job, on, kind in db.execute(
                    "SELECT d.job, d.on_job, d.kind FROM dependencies d JOIN jobs j "
                    "ON j.name = d.job WHERE j.run = ? ORDER BY d.job, d.on_job", [run]):
                found.setdefault(job, []).append((on, kind))
        return found

    def _select(self, where: str, args: list[object]) -> list[JobRow]:
        with self._db() as db:
            cur = db.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs {where}", args)
            return [JobRow(**dict(zip(_COLUMNS, row, strict=True))) for row in cur.fetchall()]

    # ---- transfers
    def start_transfer(self, run: str | None, direction: str, source: str,
                       destination: str) -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO transfers (run, direction, source, destination, started_at) "
                "VALUES (?, ?, ?, ?, ?)", [run, direction, source, destination, time.time()])
            return int(cur.lastrowid or 0)

    def finish_transfer(self, transfer_id: int, *, ok: bool, files: int, nbytes: int) -> None:
        with self._db() as db:
            db.execute("UPDATE transfers SET finished_at = ?, ok = ?, files = ?, bytes = ? "
                       "WHERE id = ?", [time.time(), int(ok), files, nbytes, transfer_id])

    def transfers(self, run: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            where, args = ("WHERE run = ?", [run]) if run else ("", [])
            return [dict(r) for r in db.execute(f"SELECT * FROM transfers {where} ORDER BY id",
                                                args)]

    # ---- cluster facts (what doctor detected: the dialect, the absolute remote dir)
    def facts(self, host: str) -> dict[str, str]:
        with self._db() as db:
            return dict(db.execute("SELECT key, value FROM cluster_facts WHERE host = ?",
                                   [host]).fetchall())

    def save_facts(self, host: str, **facts: str) -> None:
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO cluster_facts VALUES (?, ?, ?)",
                           [(host, k, str(v)) for k, v in facts.items()])


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database of any earlier version to SCHEMA_VERSION.

    Version 1 (no ``user_version``, a ``jobs`` table only; cluster facts in
    ``.hpcnn/cluster.json``) gains the v2 tables, a run row for each run its jobs name (the
    dataset is read back from the run id's number, as far as it can be), and the facts file's
    content. Version 2 gains experiments (``_migrate_to_3``).
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version >= SCHEMA_VERSION:
        return
    if version < 2:
        _migrate_to_2(db)
    _migrate_to_3(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Each run becomes the one run of an experiment of its own id (its folds from the
    options it was recorded with), and each dependency learns the name of the job it waits
    for (the job of the same run that had that scheduler id)."""
    db.executescript(_V3)
    for table, column in _V3_COLUMNS:  # another process may have migrated meanwhile
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
    for run_id, dataset, trainer, plans, configuration, host, created, options in db.execute(
            "SELECT id, dataset, trainer, plans, configuration, host, created_at, options "
            "FROM runs").fetchall():
        try:
            folds = [int(f) for f in json.loads(options or "{}").get("folds") or range(5)]
        except (ValueError, TypeError, AttributeError):
            folds = list(range(5))
        db.execute("INSERT OR IGNORE INTO experiments (id, dataset, trainer, plans, "
                   "configurations, folds, host, created_at, options) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [run_id, dataset, trainer, plans, json.dumps([configuration]),
                    json.dumps(folds), host, created, options or "{}"])
        db.execute("UPDATE runs SET experiment = ? WHERE id = ?", [run_id, run_id])
    db.execute("UPDATE dependencies SET on_name = (SELECT j.name FROM jobs j, jobs me "
               "WHERE me.name = dependencies.job AND j.run = me.run "
               "AND j.scheduler_id = dependencies.on_job) WHERE on_name IS NULL")


def _migrate_to_2(db: sqlite3.Connection) -> None:
    db.executescript(_V1_JOBS + _V2)
    now = time.time()
    rows = db.execute("SELECT run, MIN(COALESCE(submitted_at, updated_at)) FROM jobs "
                      "GROUP BY run").fetchall()
    for run_id, first in rows:
        parts = run_id.split("-")
        trainer = parts[1] if len(parts) > 1 else ""
        config = parts[2] if len(parts) > 2 else ""
        plans = parts[3] if len(parts) > 3 else "nnUNetPlans"
        db.execute("INSERT OR IGNORE INTO runs (id, dataset, trainer, plans, configuration, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                   [run_id, parts[0], trainer, plans, config, first or now])
    facts_file = Path(db.execute("PRAGMA database_list").fetchone()[2]).with_name("cluster.json")
    try:
        facts = json.loads(facts_file.read_text())
    except (OSError, ValueError):
        facts = {}
    for host, entry in facts.items() if isinstance(facts, dict) else ():
        for key, value in (entry.items() if isinstance(entry, dict) else ()):
            db.execute("INSERT OR IGNORE INTO cluster_facts VALUES (?, ?, ?)",
                       [host, key, str(value)])
