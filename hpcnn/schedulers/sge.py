"""Grid Engine (Sun/Oracle SGE, Son of Grid Engine, Univa/Altair Grid Engine): ``qsub -terse``,
one ``qstat -xml`` for every job, ``qdel``.

``qstat -xml -u <me>`` lists every pending and running job of the account with its state
letters (``qw``, ``hqw``, ``r``, ``Eqw``, ``dr`` ...); it is one call whatever the number of
jobs, and ids are picked from it here. Grid Engine forgets a job the moment it ends (``qstat``
has no finished jobs, and ``qacct`` reads an accounting file that sites may disable or let grow
to gigabytes), so a finished job is simply missing from the answer and its own exit marker
decides, as with every other dialect. A job in error state (``E``: it will not run until
``qmod -cj`` clears it) carries its "error reason", which only ``qstat -j`` prints: the status
call asks for it in the same round trip, and only when some job is in that state.

A ``qdel`` of a running job kills it with SIGKILL (SIGUSR2 first only for ``qsub -notify``),
and a job that passes ``h_rt`` or ``h_vmem`` is killed the same way: the job writes no exit
marker. ``hpcnn cancel`` records its own cancels, so they stay cancelled; a job deleted by
someone else is cancelled while Grid Engine still lists it (``dr``), then ``lost`` after the
grace period, which is all the truth that is left. The training launcher stops itself before
the walltime (``HPCNN_DEADLINE``), so ``h_rt``'s SIGKILL should not be what ends a fold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.schedulers.base import Dependency, Dialect, JobState, SchedulerJob
from hpcnn.units import format_memory

# The account's jobs in one call; the "error reason" lines of jobs in error state after them.
_STATUS = (
    'out=$(qstat -xml -u "$(id -un)") || { rc=$?; printf "%s\\n" "$out"; exit "$rc"; }\n'
    'printf "%s\\n" "$out"\n'
    "if printf '%s\\n' \"$out\" | grep -q '<state>[^<]*E'; then\n"
    '    qstat -j "$1" 2>/dev/null | grep -E "^(job_number|error reason)"\n'
    "fi\n"
    "exit 0"
)
_JOB_LIST = re.compile(r"<job_list\b[^>]*>(.*?)</job_list>", re.S)
_NUMBER = re.compile(r"<JB_job_number>\s*(\d+)\s*</JB_job_number>")
_STATE = re.compile(r"<state>\s*([^<]*?)\s*</state>")
_REASON_JOB = re.compile(r"^job_number:\s*(\d+)", re.M)
# "error reason    1:      12/01/2026 17:49:43 [1002:25107]: error: can't open output file ..."
_REASON = re.compile(
    r"^error reason\s+\d+:\s*(?:\d\d/\d\d/\d{4} [\d:]+ \[[^\]]*\]:\s*)?(.*\S)", re.M)
# -terse: "42" or "42.1-5:1" (an array); without it: Your job 42 ("name") has been submitted.
_SUBMITTED = re.compile(r"^\s*(?:Your job(?:-array)? )?(\d+)(?:\.\d+-\d+:\d+)?(?:\s|$)")
_VERSION = re.compile(
    r"^\s*((?:SGE|UGE|AGE|OGS/GE|GE)|Univa Grid Engine|Altair Grid Engine)\s+(\d\S*)", re.M)


def job_state(letters: str, error_reason: str | None = None) -> tuple[JobState, str | None]:
    """Grid Engine's state letters → hpcnn's state and a reason.

    ``d`` (being deleted) wins over everything: the job was cancelled, it only has not left
    yet. ``E`` (error: it will never start on its own) is held with Grid Engine's error reason
    and the fix, not failed: the job may still run once the cause is fixed and the state
    cleared. A running job is running even when suspended (``s``/``S``/``T``) or restarted
    (``Rr``); a hold (``h``: user, system or ``-hold_jid`` dependency) on a pending job is held;
    ``qw``/``Rq`` (rescheduled) is queued.
    """
    if "d" in letters:
        return JobState.CANCELLED, "deleted (qdel)"
    if "E" in letters:
        why = error_reason or "no reason given"
        return JobState.HELD, (f"error state: {why}; fix the cause, then `qmod -cj <id>` lets "
                               "it run (or `qdel <id>`)")
    if re.search(r"[rtsST]", letters):
        return JobState.RUNNING, None
    if "h" in letters:
        return JobState.HELD, None
    if re.search(r"[qw]", letters):
        return JobState.QUEUED, None
    return JobState.UNKNOWN, None


def error_reasons(text: str) -> dict[str, str]:
    """``job_number: 7`` / ``error reason 1: ...`` lines of ``qstat -j`` → {id: first reason}."""
    reasons: dict[str, str] = {}
    numbers = list(_REASON_JOB.finditer(text))
    for n, match in enumerate(numbers):
        end = numbers[n + 1].start() if n + 1 < len(numbers) else len(text)
        reason = _REASON.search(text, match.end(), end)
        if reason:
            reasons[match.group(1)] = reason.group(1)
    return reasons


class SgeDialect(Dialect):
    name = "sge"
    max_job_name = 200
    """Grid Engine keeps long names; qstat's table cuts them for display only."""
    job_id_variables = ("JOB_ID",)
    detect_probe = "qstat -help"

    def detect(self, probe_output: str) -> str | None:
        """Grid Engine's ``qstat -help`` starts with its product and version (``SGE 8.1.9``,
        ``UGE 8.6.4``, ``GE 6.2u5``); Torque's, PBS Pro's and Slurm's wrapper qstat print a
        usage or an error, never such a line."""
        found = _VERSION.search(probe_output)
        return f"qstat -help: {found.group(1)} {found.group(2)}" if found else None

    def format_memory(self, mb: int) -> str:
        """Grid Engine's ``G``/``M`` suffixes (powers of 1024), as Slurm writes them."""
        return format_memory(mb, "slurm")

    def format_mail(self, events: str) -> str:
        """``-m`` takes b, e, a (and s, n) as hpcnn writes them."""
        return events

    def submit_command(self, script: str, *, dependencies: Sequence[Dependency] = ()) -> list[str]:
        """``qsub -terse`` prints the bare id. Grid Engine has no ``afterok``: ``-hold_jid``
        starts the job once the named jobs have ended, however they ended, so every
        dependency kind becomes ``-hold_jid`` and the engine's markers decide what the
        dependent job does with a failed parent. Never ``-V``: the job script exports what it
        needs."""
        hold = ["-hold_jid", ",".join(d.job_id for d in dependencies)] if dependencies else []
        return ["qsub", "-terse", *hold, script]

    def parse_submit(self, stdout: str) -> str:
        for line in stdout.splitlines():
            match = _SUBMITTED.match(line)
            if match:
                return match.group(1)
        raise SchedulerError(f"qsub did not print a job id: {stdout.strip() or '(no output)'}")

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["sh", "-c", _STATUS, "sh", ",".join(job_ids)]

    def parse_status(
        self, stdout: str, stderr: str, returncode: int, job_ids: Sequence[str]
    ) -> Mapping[str, SchedulerJob]:
        """States of the asked ids among the account's jobs; array tasks of one job share its
        id, and the first listed (running tasks come first) speaks for it."""
        if returncode != 0 or "<job_info" not in stdout:
            message = stderr.strip() or stdout.strip() or "no output"
            raise SchedulerUnavailable(f"qstat failed (exit {returncode}): {message}")
        xml, found, tail = stdout.rpartition("</job_info>")
        if not found:  # cut short: a job missing from it has not left the queue
            raise SchedulerUnavailable("qstat -xml was cut short: " + stdout.strip()[-200:])
        reasons = error_reasons(tail)
        wanted = set(job_ids)
        jobs: dict[str, SchedulerJob] = {}
        for block in _JOB_LIST.finditer(xml):
            number, letters = _NUMBER.search(block.group(1)), _STATE.search(block.group(1))
            if not number or not letters:
                continue
            job_id = number.group(1)
            if job_id not in wanted or job_id in jobs:
                continue
            state, reason = job_state(letters.group(1), reasons.get(job_id))
            jobs[job_id] = SchedulerJob(job_id, state, reason=reason, raw_state=letters.group(1))
        return jobs

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]


DIALECT = SgeDialect
