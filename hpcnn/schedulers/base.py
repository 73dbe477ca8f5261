"""What every scheduler dialect provides: pure data and parsing, no I/O.

A dialect knows how a job asks for resources (its header template), the argv of submit, status
and cancel, and how to read their output into hpcnn's one state vocabulary. A Connection runs the
argv; the dialect never touches the network or the disk. Adding a scheduler is one template
(``templates/header/<name>.sh.j2``), one module here and its fixture tests.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class JobState(str, Enum):
    """One vocabulary for every dialect (design.md: Runs, jobs, states)."""

    PENDING = "pending"  # recorded by hpcnn, not yet submitted
    QUEUED = "queued"
    HELD = "held"  # waiting on a dependency or a hold
    RUNNING = "running"
    TIMEOUT = "timeout"  # stopped at walltime
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # left the queue with no exit marker, after the grace period
    UNKNOWN = "unknown"  # the scheduler did not answer

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES

    def __str__(self) -> str:
        return self.value


FINISHED_STATES = frozenset(
    {JobState.TIMEOUT, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.LOST}
)


@dataclass(frozen=True)
class SchedulerJob:
    """What the scheduler itself says about one job (markers are read separately)."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    reason: str | None = None
    raw_state: str | None = None


@dataclass(frozen=True)
class Dependency:
    """Start only after ``job_id`` ended: ``afterok`` (exit 0) or ``afterany``."""

    job_id: str
    kind: str = "afterok"

    def __post_init__(self) -> None:
        if self.kind not in ("afterok", "afterany", "afternotok"):
            raise ValueError(f"unknown dependency kind {self.kind!r}")


class Dialect(ABC):
    """One scheduler's commands and output formats."""

    name: str
    max_job_name: int = 64
    """Longest job name the scheduler keeps; longer names are shortened (see job_name)."""

    @property
    def header_template(self) -> str:
        return f"header/{self.name}.sh.j2"

    def job_name(self, name: str) -> str:
        """Sanitise a job name to what the scheduler accepts (letters, digits, ``._-``).

        A name over ``max_job_name`` keeps its start plus a short hash of the whole name: a plain
        cut would give every fold of a run the same name (Torque keeps 15 characters), and
        names are how a crash between submit and the registry is reconciled.
        """
        clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "hpcnn"
        if not clean[0].isalpha():
            clean = "j" + clean
        if len(clean) <= self.max_job_name:
            return clean
        digest = hashlib.sha1(clean.encode()).hexdigest()[:5]
        return f"{clean[: self.max_job_name - len(digest) - 1].rstrip('_.-')}-{digest}"

    @abstractmethod
    def submit_command(
        self, script: str, *, workdir: str, dependencies: Sequence[Dependency] = ()
    ) -> list[str]:
        """argv that submits ``script`` (a remote path) from ``workdir``."""

    @abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id in the submit command's output; SchedulerError when there is none."""

    @abstractmethod
    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        """argv of ONE call that reports on every id in ``job_ids``."""

    @abstractmethod
    def parse_status(
        self, stdout: str, stderr: str, returncode: int, job_ids: Sequence[str]
    ) -> Mapping[str, SchedulerJob]:
        """States of the ids the scheduler still knows; ids it forgot are left out.

        Raises SchedulerUnavailable when the call itself failed (then every state is unknown).
        """

    @abstractmethod
    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """argv that cancels the jobs."""
