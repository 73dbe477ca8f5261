"""What the cluster dialects share: dependency syntax and the PBS family's logic.

Torque and PBS Pro both descend from OpenPBS: the same ``qsub -W depend=...``, the same job-id
shape (``123.server``, arrays ``123[]``/``123[4]``), the same ``qdel``, and finished jobs whose
exit status has negative values of the batch system's own. They differ only in how ``qstat``
reports (Torque text, PBS Pro JSON), so :class:`PbsDialect` does everything else once and each
subclass reads its own qstat output into :class:`RawJob` records. Slurm shares the dependency
syntax (``afterok:1:2,afterany:3``).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.schedulers.base import Dependency, Dialect, JobState, SchedulerJob

# 123, 123.server.domain, 123[], 123[4].server: qsub prints nothing else on success.
_JOB_ID = re.compile(r"^\s*(\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?)\s*$")
_SIGNAL_BASE = 256  # Torque/PBS report "killed by signal N" as 256+N (bash reports 128+N)
_UNKNOWN_ID = 153  # PBSE_UNKJOBID (15001) as an exit status
_CUT = "qstat's answer for this job was cut off"


def dependency_spec(dependencies: Sequence[Dependency]) -> str:
    """``afterok:1:2,afterany:3``: ids of one kind joined by ``:``, kinds by ``,``."""
    kinds: dict[str, list[str]] = {}
    for dep in dependencies:
        kinds.setdefault(dep.kind, []).append(dep.job_id)
    return ",".join(":".join([kind, *ids]) for kind, ids in kinds.items())


def hms_seconds(text: str | None) -> int | None:
    """``05:00:00`` (or ``1:05:00:00``: Torque's ``[[[DD:]HH:]MM:]SS``, days first) → seconds;
    None when absent or unreadable."""
    if not text or not re.fullmatch(r"\d+(:\d+){0,3}", text.strip()):
        return None
    *rest, seconds = (int(part) for part in text.strip().split(":"))
    for part, unit in zip(reversed(rest), (60, 3600, 86400), strict=False):
        seconds += part * unit
    return seconds


def qstat_failure(stderr: str, returncode: int) -> str | None:
    """The error text when a qstat call failed as a whole, or None when it only forgot ids.

    "Unknown Job Id" (and exit 153 with nothing printed: Slurm's Torque wrapper) means the ids
    left the server's memory, not that the scheduler is down.
    """
    if returncode == 0:
        return None
    other = [
        line for line in stderr.splitlines()
        if line.strip() and not re.search(r"unknown job id|job has finished", line, re.I)
    ]
    if other:
        return "\n".join(other)
    if stderr.strip() or returncode == _UNKNOWN_ID:
        return None
    return f"qstat exited {returncode} without a message"


@dataclass(frozen=True)
class RawJob:
    """The attributes of one job that hpcnn reads from qstat, whatever its format."""

    state: str
    exit_status: str | None = None
    used_walltime: str | None = None
    walltime_limit: str | None = None
    comment: str | None = None
    complete: bool = True
    """False when the record was cut before its end (a dropped connection, a killed qstat):
    what it says may be the start of a longer value, so it never makes a job finished."""


class PbsDialect(Dialect):
    """Submit, status rules and cancel as Torque and PBS Pro both do them."""

    active_states: Mapping[str, JobState]
    finished_states: frozenset[str]
    walltime_codes: frozenset[int]
    """Exit statuses that mean "killed at its walltime" (the batch system's own codes)."""
    limit_codes: Mapping[int, str]
    """Other exit statuses of the batch system's own that say why it killed a job (memory),
    by their name in the administrator's guide: shown to the user, never hidden."""

    @abstractmethod
    def read_status(self, stdout: str) -> Mapping[str, RawJob]:
        """qstat's output → {job id as printed: attributes}; unreadable parts are skipped."""

    @abstractmethod
    def readable(self, stdout: str) -> bool:
        """Whether ``stdout`` is this dialect's qstat answer at all (even one listing no job)."""

    # Slurm's Torque wrapper leaves PBS_JOBID empty and sets SLURM_JOB_ID.
    job_id_variables = ("PBS_JOBID", "SLURM_JOB_ID")
    detect_probe = "qstat --version"
    version_pattern: re.Pattern[str]
    """What ``qstat --version`` prints on this batch system; group 1 is the version."""
    product: str

    def detect(self, probe_output: str) -> str | None:
        found = self.version_pattern.search(probe_output)
        return f"qstat --version: {self.product} {found.group(1)}" if found else None

    def submit_command(self, script: str, *, dependencies: Sequence[Dependency] = ()) -> list[str]:
        """qsub never gets ``-V``: exporting the whole environment leaks ``BASH_FUNC_*``
        variables that break PBS Pro's JSON status (OpenPBS issue 2541); the job script sets
        what it needs."""
        depend = ["-W", f"depend={dependency_spec(dependencies)}"] if dependencies else []
        return ["qsub", *depend, script]

    def parse_submit(self, stdout: str) -> str:
        """The job id printed by qsub (``123``, ``123.server``), or SchedulerError."""
        for line in stdout.splitlines():
            match = _JOB_ID.match(line)
            if match:
                return match.group(1)
        raise SchedulerError(f"qsub did not print a job id: {stdout.strip() or '(no output)'}")

    def parse_status(
        self, stdout: str, stderr: str, returncode: int, job_ids: Sequence[str]
    ) -> Mapping[str, SchedulerJob]:
        """A call that failed as a whole is never trusted in part, and an answer nobody can read
        (empty although ids were asked and none was called unknown, or another format) is no
        answer: both raise SchedulerUnavailable, so jobs become ``unknown``, never ``lost``."""
        failure = qstat_failure(stderr, returncode)
        if failure:
            raise SchedulerUnavailable(f"qstat failed (exit {returncode}): {failure}")
        if (stdout.strip() or (returncode == 0 and job_ids)) and not self.readable(stdout):
            shown = stdout.strip().splitlines()[:1] or ["no output"]
            raise SchedulerUnavailable(
                f"qstat exited {returncode} with an answer that is not {self.product}'s "
                f"status format: {shown[0][:120]}")
        jobs: dict[str, SchedulerJob] = {}
        for reported, raw in self.read_status(stdout).items():
            job_id = _as_asked(reported, job_ids)
            if raw.state in self.finished_states and not raw.complete:
                jobs[job_id] = SchedulerJob(job_id, JobState.UNKNOWN, reason=_CUT,
                                            raw_state=raw.state)
            elif raw.state in self.finished_states:
                job = self._finished(job_id, raw)
                if job is not None:
                    jobs[job_id] = job
            else:
                jobs[job_id] = SchedulerJob(
                    job_id, self.active_states.get(raw.state, JobState.UNKNOWN),
                    reason=raw.comment, raw_state=raw.state or None,
                )
        return jobs

    def _finished(self, job_id: str, raw: RawJob) -> SchedulerJob | None:
        """A finished job from its exit status; None when the scheduler does not say how it
        ended (Slurm's Torque wrapper shows ``C`` for every end).

        Leaving such a job out lets its own exit marker decide, and a job without one become
        ``lost`` after the grace period, instead of a guessed "completed". A walltime kill is
        recognised by the scheduler's code or by the job having used its whole walltime.
        """
        status = (raw.exit_status or "").strip()
        if not re.fullmatch(r"-?\d+", status):
            return None
        code = int(status)
        used, limit = hms_seconds(raw.used_walltime), hms_seconds(raw.walltime_limit)
        hit_limit = used is not None and limit is not None and used >= limit
        why = None
        if code in self.walltime_codes or (code != 0 and hit_limit):
            state, why = JobState.TIMEOUT, "walltime exceeded"
        elif code == 0:
            state = JobState.COMPLETED
        else:
            state = JobState.FAILED
            if code in self.limit_codes:
                why = f"killed by the batch system: {self.limit_codes[code]} (exit {code})"
            elif code > _SIGNAL_BASE:
                why = f"killed by signal {code - _SIGNAL_BASE}"
            elif code < 0:
                why = f"the batch system's own exit code {code}"
        detail = "; ".join(part for part in (why, raw.comment) if part) or None
        return SchedulerJob(job_id, state, exit_code=code, reason=detail, raw_state=raw.state)

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]


def _as_asked(reported: str, asked: Sequence[str]) -> str:
    """The id as hpcnn asked for it: ``qstat 123`` may answer ``123.server``, and vice versa."""
    if reported in asked:
        return reported
    base = reported.split(".", 1)[0]
    return next((job_id for job_id in asked if job_id.split(".", 1)[0] == base), reported)
