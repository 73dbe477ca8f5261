"""Slurm: ``sbatch --parsable``, one ``squeue`` for every job (exit codes included), ``scancel``.

``squeue -t all`` lists pending, running AND recently finished jobs (until MinJobAge), and its
``--Format`` field ``exit_code`` carries the job's raw wait status, so one call answers state,
reason and exit code without ``sacct`` (which needs accounting storage many sites and the test
bed lack) or one ``scontrol show job`` per id. Ids Slurm has forgotten are left out of the
answer; only when none is known does squeue fail ("Invalid job id specified"), which is still
not a failure of the scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.schedulers.base import Dependency, Dialect, JobState, SchedulerJob
from hpcnn.schedulers.batch import dependency_spec
from hpcnn.units import format_memory

_MAIL = {"a": "FAIL", "b": "BEGIN", "e": "END"}

# Name last: it is the only field that may itself contain the separator.
_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,Name:"
_STATES = {
    "PENDING": JobState.QUEUED,
    "CONFIGURING": JobState.QUEUED,  # nodes allocated, still booting
    "REQUEUED": JobState.QUEUED,
    "REQUEUE_FED": JobState.QUEUED,
    "REQUEUE_HOLD": JobState.HELD,
    "RESV_DEL_HOLD": JobState.HELD,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,  # the script ended, Slurm is still cleaning up
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "PREEMPTED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.HELD,  # requeued in a held state: released, it runs again
    "TIMEOUT": JobState.TIMEOUT,
    "CANCELLED": JobState.CANCELLED,
}
_HOLD_REASONS = re.compile(r"^(Dependency|DependencyNeverSatisfied|JobHeld\w*)$")
_SUBMITTED = re.compile(r"^\s*(?:Submitted batch job\s+)?(\d+(?:_\d+)?)(?:;\S+)?\s*$")
_UNKNOWN_IDS = "Invalid job id specified"


def exit_code(field: str) -> int | None:
    """squeue's ``exit_code`` → a shell-style code: the raw wait status (``768`` = exit 3,
    ``15`` = SIGTERM → 143), or ``code:signal`` as sacct/scontrol print it."""
    text = field.strip()
    pair = re.fullmatch(r"(\d+):(\d+)", text)
    if pair:
        code, signal = int(pair.group(1)), int(pair.group(2))
    elif text.isdigit():
        code, signal = (int(text) >> 8) & 0xFF, int(text) & 0x7F
    else:
        return None
    return 128 + signal if signal else code


class SlurmDialect(Dialect):
    name = "slurm"
    max_job_name = 200  # Slurm keeps far more; long names only make squeue output unreadable

    job_id_variables = ("SLURM_JOB_ID",)
    detect_probe = "command -v sbatch; command -v squeue; command -v qsub"

    def detect(self, probe_output: str) -> str | None:
        """sbatch and squeue on the PATH; Slurm's Torque wrappers (qsub) often sit beside them,
        and then Slurm is still the right dialect: native squeue reports exit codes, TIMEOUT,
        CANCELLED and the reasons a job waits, which the wrapper's qstat folds into C/Q."""
        have = {line.rsplit("/", 1)[-1].strip() for line in probe_output.splitlines()}
        if not {"sbatch", "squeue"} <= have:
            return None
        return "sbatch and squeue found" + ("; Slurm's Torque wrappers qsub/qstat too"
                                            if "qsub" in have else "")

    def format_memory(self, mb: int) -> str:
        return format_memory(mb, "slurm")

    def format_mail(self, events: str) -> str:
        return "NONE" if events == "n" else ",".join(_MAIL[e] for e in events)

    def submit_command(self, script: str, *, dependencies: Sequence[Dependency] = ()) -> list[str]:
        """``--parsable`` prints just ``ID`` (or ``ID;cluster``); sbatch runs in the job's
        folder, which Slurm takes as the job's working directory."""
        depend = [f"--dependency={dependency_spec(dependencies)}"] if dependencies else []
        return ["sbatch", "--parsable", *depend, script]

    def parse_submit(self, stdout: str) -> str:
        for line in stdout.splitlines():
            match = _SUBMITTED.match(line)
            if match:
                return match.group(1)
        raise SchedulerError(f"sbatch did not print a job id: {stdout.strip() or '(no output)'}")

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-O", _FORMAT]

    def parse_status(
        self, stdout: str, stderr: str, returncode: int, job_ids: Sequence[str]
    ) -> Mapping[str, SchedulerJob]:
        if returncode != 0:
            if _UNKNOWN_IDS in stderr:
                return {}
            message = stderr.strip() or stdout.strip() or "no message"
            raise SchedulerUnavailable(f"squeue failed (exit {returncode}): {message}")
        jobs: dict[str, SchedulerJob] = {}
        for line in stdout.splitlines():
            parts = line.split("|", 4)
            if len(parts) < 4 or not parts[0].strip():
                continue  # a blank or foreign line: the next one may still be a job
            job_id, raw, reason, code = (p.strip() for p in parts[:4])
            state = _STATES.get(raw.split()[0] if raw else "", JobState.UNKNOWN)
            if state == JobState.QUEUED and raw == "PENDING" and _HOLD_REASONS.match(reason):
                state = JobState.HELD
            code_value = exit_code(code) if state.finished else None
            if state == JobState.CANCELLED and not code_value:
                code_value = None  # cancelled before it ran: there is no exit code
            jobs[job_id] = SchedulerJob(
                job_id, state, exit_code=code_value,
                reason=None if reason in ("", "None") else reason,
                raw_state=raw,
            )
        if stdout.strip() and not jobs:
            # Another format (a site's squeue wrapper, a changed --Format): no answer at all,
            # not "every job left the queue".
            raise SchedulerUnavailable("squeue printed nothing hpcnn can read: "
                                       + stdout.strip().splitlines()[0][:120])
        return jobs

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["scancel", *job_ids]


DIALECT = SlurmDialect
