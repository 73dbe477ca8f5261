"""What every scheduler dialect provides: pure data and parsing, no I/O.

A dialect knows how a job asks for resources (its header template and the filters it uses),
the argv of submit, status and cancel, how the script is handed to submit (a path or stdin), the
dependency syntax, the variable that holds a running job's id, how to recognise its scheduler on a
login node, and how to read their output into hpcnn's one state vocabulary. A Connection runs the
argv; the dialect never touches the network or the disk. Adding a scheduler is one template
(``templates/header/<name>.sh.j2``), one module and its fixture tests; a site registers its own
through the ``hpcnn.dialects`` entry point group (hpcnn.schedulers).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
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
    job_id_variables: tuple[str, ...] = ()
    """Environment variables that hold the running job's id, first set wins (the job script
    records it in its ``started`` marker)."""
    script_on_stdin: bool = False
    """True when submit reads the script on stdin (LSF's ``bsub < job.sh``) instead of a path."""
    detect_probe: str | None = None
    """A shell line run in the cluster's login shell whose output ``detect`` reads; None: this
    dialect is never detected (it must be named in cluster.yaml)."""
    templates_dir: str | None = None
    """A folder holding ``header/<name>.sh.j2`` for dialects outside hpcnn (plug-ins)."""

    @property
    def header_template(self) -> str:
        return f"header/{self.name}.sh.j2"

    def detect(self, probe_output: str) -> str | None:
        """Evidence (e.g. ``qstat --version: Torque 6.1.2``) when ``detect_probe``'s output
        shows this scheduler; None otherwise."""
        return None

    def format_memory(self, mb: int) -> str:
        """Memory as the header writes it (the ``mem`` filter of the header template)."""
        from hpcnn.units import format_memory

        return format_memory(mb, "pbs")

    def format_mail(self, events: str) -> str:
        """Mail events (``abe`` letters, or ``n``) as the header writes them (``mail`` filter)."""
        return events

    def template_filters(self) -> dict[str, Callable[..., str]]:
        """Filters the header template uses, bound to this dialect."""
        return {"mem": self.format_memory, "mail": self.format_mail}

    def job_id_expression(self) -> str:
        """The shell expression giving the running job's id (``${A:-${B:-}}``)."""
        expr = ""
        for var in reversed(self.job_id_variables):
            expr = f"${{{var}:-{expr}}}"
        return expr

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
    def submit_command(self, script: str, *, dependencies: Sequence[Dependency] = ()) -> list[str]:
        """argv that submits ``script`` (a file name in the job's folder, where the engine runs
        the command; with ``script_on_stdin`` the script's text arrives on stdin instead)."""

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
