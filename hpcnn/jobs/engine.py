"""The job engine: submit, observe, cancel and read the logs of jobs, on any scheduler.

Every command that runs jobs (doctor's probe, train-all-folds, status, logs, cancel) goes
through here. A job's state is the scheduler's word combined with the job's own markers
(``started``, ``exit_code``, written by the job script itself). Polling N jobs is ONE remote
command: the dialect's status call and a read of every job's markers (and, when asked, the
tail of its training log), in one shell line over one connection.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.remote.base import Connection, join_argv, packed_line, unpacked
from hpcnn.schedulers.base import Dependency, Dialect, JobState, SchedulerJob
from hpcnn.state import JobRow, Registry

SCRIPT_NAME = "job.sh"
MARKERS = ("started", "exit_code")  # written by the job itself (templates/body.sh.j2)
SUBMITTED = "submitted"  # the scheduler's answer to submit, written beside job.sh
SETUP_FAILED_EXIT = 97  # the body template's exit code when environment.setup fails
CONTINUE_EXIT = 75  # hpcnn's training launcher: stopped before the walltime, continue me
BLOCKED_EXIT = 96  # a job whose afterok dependency did not complete (hpcnn.jobs.graph)

_SEP = "__HPCNN_{}__"

READ = "_hpcnn_cat"
TAIL = "_hpcnn_tail"
"""Shell functions every poll command defines (``READ FILE``, ``TAIL N FILE``): a file's text,
or nothing when it does not exist. A job that has not started has no markers and no logs, and
a test first spares the fork of ``cat``/``tail``: a poll of 100 queued jobs ran 600 of them."""
_READERS = (f'{READ}() {{ [ -e "$1" ] && cat "$1" 2>/dev/null; }}; '
            f'{TAIL}() {{ [ -e "$2" ] && tail -n "$1" "$2" 2>/dev/null; }}')


def dir_words(dirs: Sequence[str], var: str) -> tuple[str, list[str]]:
    """The folders as short shell words for one command line: their common leading text
    assigned to ``var`` once (the returned line), each folder as ``"$var"REST``. A poll of 100
    jobs otherwise repeats full paths hundreds of times (87 kB of command per poll); the common
    text, not only the common parent, goes once, as job folders differ only in their last few
    characters (``...-f3-a12``): the poll's command shrinks threefold."""
    base = os.path.commonprefix(list(dirs)) if len(dirs) > 1 else ""
    # Plain text, never a path rewritten by relpath: with a symbolic link in the folder,
    # "link/../x" and "x" are different folders; the shell joins the two texts back as given.
    if len(base) < 2:
        return "true", [shlex.quote(d) for d in dirs]
    return (f"{var}={shlex.quote(base)}",
            [f'"${var}"{shlex.quote(d[len(base):])}' for d in dirs])


def submit(
    conn: Connection,
    dialect: Dialect,
    script_text: str,
    job_dir: str,
    dependencies: Sequence[Dependency] = (),
) -> str:
    """Write the script into its job folder and submit it from there; returns the job id.

    A refusal raises SchedulerError carrying the scheduler's own message (e.g. Slurm's
    "Requested node configuration is not available").
    """
    conn.write_text(posixpath.join(job_dir, SCRIPT_NAME), script_text, mode=0o700)
    # Submitted from its own folder by a relative name: works for a relative remote_dir too
    # (login shells start in $HOME), and the scheduler's own output files land beside it.
    argv = dialect.submit_command(SCRIPT_NAME, dependencies=dependencies)
    line = join_argv(argv) + (f" < {SCRIPT_NAME}" if dialect.script_on_stdin else "")
    # A folder reused by a resubmission must not show the previous job's markers. The
    # scheduler's answer is kept beside the script in the same remote command, so that a crash
    # of hpcnn right after the scheduler accepted the job is repaired by the next command.
    stale = " ".join(f"{m} .{m}.tmp" for m in (*MARKERS, SUBMITTED))
    res = conn.run_shell(
        f"cd {shlex.quote(job_dir)} && rm -f {stale} && out=$({line}); rc=$?; "
        f'printf "%s\\n" "$out"; [ "$rc" -eq 0 ] && printf "%s\\n" "$out" > .{SUBMITTED}.tmp '
        f"&& mv -f .{SUBMITTED}.tmp {SUBMITTED}; exit $rc", check=False)
    if not res.ok:
        message = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}")
        raise SchedulerError(f"{dialect.name} refused job {posixpath.basename(job_dir)}: {message}")
    return dialect.parse_submit(res.stdout)


def recover_submitted(conn: Connection, dialect: Dialect,
                      job_dirs: Sequence[str]) -> dict[str, str]:
    """Job ids the scheduler gave to jobs whose submission hpcnn did not live to record, by job
    folder (one remote command for all)."""
    if not job_dirs:
        return {}
    parts = [f'printf "\\n%s %s\\n" {_SEP.format("JOB")} {i}; '
             f"cat {shlex.quote(posixpath.join(d, SUBMITTED))} 2>/dev/null"
             for i, d in enumerate(job_dirs)]
    res = conn.run_shell("; ".join([*parts, "true"]), check=False)
    found: dict[str, str] = {}
    for block in res.stdout.split(_SEP.format("JOB") + " ")[1:]:
        index, _, body = block.partition("\n")
        if not index.strip().isdigit() or int(index) >= len(job_dirs) or not body.strip():
            continue
        try:
            found[job_dirs[int(index)]] = dialect.parse_submit(body)
        except SchedulerError:
            continue
    return found


def cancel(conn: Connection, dialect: Dialect, job_ids: Sequence[str]) -> None:
    if job_ids:
        conn.run(dialect.cancel_command(job_ids), check=False)


def cancel_rows(registry: Registry, conn: Connection, dialect: Dialect,
                rows: Sequence[JobRow], detail: str = "cancelled with hpcnn cancel") -> None:
    """Cancel the jobs in ONE scheduler call and record it (a cancelled job stays cancelled
    whatever signal exit follows: ``decide``)."""
    cancel(conn, dialect, [r.scheduler_id or "" for r in rows])
    registry.update_many([(r.name, {"state": JobState.CANCELLED.value, "detail": detail})
                          for r in rows])


@dataclass(frozen=True)
class Markers:
    """What the job script wrote about itself."""

    started: Mapping[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    exit_info: Mapping[str, str] = field(default_factory=dict)
    err_tail: str = ""

    @property
    def has_started(self) -> bool:
        return bool(self.started)


@dataclass(frozen=True)
class Observation:
    """One poll's raw material for a job: scheduler view (None: not in the queue) + markers."""

    scheduler: SchedulerJob | None
    markers: Markers


def poll(
    conn: Connection, dialect: Dialect, jobs: Sequence[tuple[str, str]], err_lines: int = 5
) -> tuple[dict[str, Observation], bool]:
    """Observe ``(scheduler_id, job_dir)`` pairs in one remote command.

    Returns observations by job id and whether the scheduler answered (False: its states are
    unknown; the markers are still read and still true).
    """
    observed, answered, _ = poll_with(conn, dialect, jobs, err_lines=err_lines)
    return observed, answered


def poll_with(
    conn: Connection, dialect: Dialect, jobs: Sequence[tuple[str, str]], *,
    err_lines: int = 5, extra: Sequence[str] = (),
) -> tuple[dict[str, Observation], bool, list[str]]:
    """``poll`` plus ``extra`` shell snippets (quoted by the caller; they may use ``READ`` and
    ``TAIL``) run in the SAME remote command, e.g. the tails of training logs; returns their
    outputs in order too."""
    parts = [_READERS]
    ids = [job_id for job_id, _ in jobs]
    if jobs:
        parts += [
            't=$(mktemp)',
            f'{join_argv(dialect.status_command(ids))} 2>"$t"; rc=$?',
            f'printf "\\n%s\\n" {_SEP.format("STDERR")}; cat "$t"; rm -f "$t"',
            f'printf "\\n%s %s\\n" {_SEP.format("RC")} "$rc"',
        ]
    if jobs:
        assign, words = dir_words([job_dir for _, job_dir in jobs], "_hpcnn_jobs")
        parts += [
            assign,
            f'_hpcnn_job() {{ printf "\\n%s %s\\n" {_SEP.format("JOB")} "$1"; '
            f'{READ} "$2"/started; printf "\\n%s\\n" {_SEP.format("EXIT")}; '
            f'{READ} "$2"/exit_code; printf "\\n%s\\n" {_SEP.format("ERR")}; '
            f'{TAIL} {int(err_lines)} "$2"/err.log; }}',
            *(f"_hpcnn_job {i} {word}" for i, word in enumerate(words)),
        ]
    for i, snippet in enumerate(extra):
        parts.append(f'printf "\\n%s %s\\n" {_SEP.format("XTRA")} {i}; {{ {snippet}; }}')
    if not jobs and not extra:
        return {}, True, []
    line = "; ".join([*parts, "true"])
    res = conn.run_shell(packed_line(line) if conn.packs_output else line, check=False)
    text, _, extras_text = unpacked(res.stdout).partition("\n" + _SEP.format("XTRA") + " ")
    extras = [""] * len(extra)
    for block in ((_SEP.format("XTRA") + " " + extras_text).split(_SEP.format("XTRA") + " ")
                  if extra else [])[1:]:
        index, _, body = block.partition("\n")
        if index.strip().isdigit() and int(index) < len(extra):
            extras[int(index)] = body
    if not jobs:
        return {}, True, extras
    stdout, _, rest = text.partition("\n" + _SEP.format("STDERR") + "\n")
    stderr, _, rest = rest.partition("\n" + _SEP.format("RC") + " ")
    rc_text, _, rest = rest.partition("\n")
    try:
        rc = int(rc_text.strip())
    except ValueError:
        rc = 255
    answered = True
    try:
        states = dialect.parse_status(stdout, stderr, rc, ids)
    except SchedulerUnavailable:
        states, answered = {}, False
    markers = _parse_markers(rest, len(jobs))
    return {
        job_id: Observation(states.get(job_id) if answered else None, markers[i])
        for i, job_id in enumerate(ids)
    }, answered, extras


def _parse_markers(text: str, n: int) -> list[Markers]:
    found = [Markers() for _ in range(n)]
    for block in text.split(_SEP.format("JOB") + " ")[1:]:
        index_text, _, body = block.partition("\n")
        if not index_text.strip().isdigit() or int(index_text) >= n:
            continue
        started, _, rest = body.partition(_SEP.format("EXIT") + "\n")
        exit_text, _, err = rest.partition(_SEP.format("ERR") + "\n")
        exit_lines = exit_text.strip().splitlines()
        code = int(exit_lines[0]) if exit_lines and exit_lines[0].strip().isdigit() else None
        found[int(index_text)] = Markers(
            started=_kv(started.splitlines()),
            exit_code=code,
            exit_info=_kv(exit_lines[1:]),
            err_tail=err.strip(),
        )
    return found


def _kv(lines: Sequence[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if "=" in line)


WALLTIME_SLACK = 0.95
"""A job stopped by SIGTERM after this share of its walltime was stopped by the walltime."""


def _when(text: str | None) -> datetime | None:
    """A marker's ``time=`` (UTC, ``2026-01-02T03:04:05Z``); None when absent or unreadable."""
    try:
        return datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return None


def _ran_to_walltime(marks: Markers) -> bool:
    limit = marks.started.get("walltime", "")
    began, ended = _when(marks.started.get("time")), _when(marks.exit_info.get("time"))
    if began is None or ended is None or not limit.isdigit():
        return False
    return (ended - began).total_seconds() >= WALLTIME_SLACK * int(limit)


def this_start(obs: Observation) -> Markers:
    """The markers that belong to the job's current start.

    A scheduler may start one job id twice (Slurm requeues on a node failure or preemption,
    PBS on ``qrerun``), and the folder still holds the first start's markers. The job's own
    clock tells them apart without asking the scheduler for a restart count that not every
    dialect reports: a job the scheduler shows waiting has not written anything of this start
    yet, and an exit marker older than the ``started`` marker ended an earlier start.
    """
    sched, marks = obs.scheduler, obs.markers
    if sched is not None and sched.state in (JobState.QUEUED, JobState.HELD):
        return Markers()
    began, ended = _when(marks.started.get("time")), _when(marks.exit_info.get("time"))
    if marks.exit_code is not None and began and ended and ended < began:
        return replace(marks, exit_code=None, exit_info={})
    return marks


def _scheduler_says(sched: SchedulerJob) -> str:
    """The scheduler's own word on a job (``OUT_OF_MEMORY (OutOfMemory)``), for details."""
    return "the scheduler says " + " ".join(
        part for part in (sched.raw_state or sched.state.value,
                          f"({sched.reason})" if sched.reason else "") if part)


@dataclass(frozen=True)
class Verdict:
    state: JobState
    exit_code: int | None
    detail: str
    first_missing_at: float | None


def decide(
    obs: Observation,
    *,
    answered: bool,
    previous: JobState,
    first_missing_at: float | None,
    grace: float,
    now: float | None = None,
) -> Verdict:
    """The one rule that turns scheduler state + markers into hpcnn's state.

    The exit marker is the truth about how a job ended (schedulers and wrappers often forget or
    hide exit codes); the scheduler is the truth about jobs that have not ended. Markers count
    only for the job's current start (``this_start``). A job the scheduler no longer lists and
    that left no exit marker is ``lost`` only after ``grace`` seconds; a scheduler that did not
    answer makes an unfinished job ``unknown``, never failed. A job recorded as cancelled (hpcnn
    cancel writes it before the scheduler has finished killing it) stays cancelled, whatever
    signal exit or disappearance follows, unless it had completed.
    """
    verdict = _decide(replace(obs, markers=this_start(obs)), answered=answered,
                      previous=previous, first_missing_at=first_missing_at, grace=grace,
                      now=time.time() if now is None else now)
    if previous == JobState.CANCELLED and verdict.state != JobState.COMPLETED:
        return Verdict(JobState.CANCELLED, verdict.exit_code, verdict.detail or "cancelled",
                       verdict.first_missing_at)
    return verdict


def _decide(obs: Observation, *, answered: bool, previous: JobState,
            first_missing_at: float | None, grace: float, now: float) -> Verdict:
    sched, marks = obs.scheduler, obs.markers
    if marks.exit_code is not None:
        return _ended(marks, sched)
    if not answered:
        return Verdict(JobState.UNKNOWN, None, "scheduler did not answer", first_missing_at)
    if sched is not None:
        if sched.state == JobState.COMPLETED and sched.exit_code not in (None, 0):
            return Verdict(JobState.FAILED, sched.exit_code, sched.reason or "", None)
        return Verdict(sched.state, sched.exit_code, sched.reason or "", None)
    # Gone from the queue without an exit marker.
    if previous.finished:
        return Verdict(previous, None, "", first_missing_at)
    first = first_missing_at or now
    if now - first >= grace:
        how = "after it started" if marks.has_started else "before it started"
        return Verdict(JobState.LOST, None,
                       f"left the queue {how} and wrote no exit marker", first)
    return Verdict(previous if previous != JobState.PENDING else JobState.UNKNOWN, None,
                   "not in the queue; waiting for its exit marker", first)


def _ended(marks: Markers, sched: SchedulerJob | None) -> Verdict:
    """A job whose script wrote its exit marker: the marker says how it ended, the scheduler
    adds what only it knows (a walltime or cancel it did, a limit it enforced)."""
    code = marks.exit_code
    if sched is not None and not sched.state.finished and sched.state != JobState.UNKNOWN:
        # The script has ended but the scheduler is still wrapping up (Slurm COMPLETING,
        # a walltime kill being recorded): wait for its word on how the job ended.
        return Verdict(JobState.RUNNING, None, f"exiting (exit code {code})", None)
    if sched is not None and sched.state in (JobState.TIMEOUT, JobState.CANCELLED):
        return Verdict(sched.state, code, sched.reason or "", None)
    # A scheduler that killed part of the job (a memory limit) while the script went on to
    # exit 0 is a warning the user must see, with the scheduler's own word.
    says = _scheduler_says(sched) if sched is not None and sched.state == JobState.FAILED else ""
    if marks.exit_info.get("signal") == "TERM" and _ran_to_walltime(marks):
        # Schedulers that hide how a job ended (Slurm's Torque wrapper shows C for
        # everything) still leave the job's own clock: it was stopped at its limit.
        return Verdict(JobState.TIMEOUT, code, "stopped at its walltime", None)
    if code == 0:
        return Verdict(JobState.COMPLETED, 0, f"warning: {says}" if says else "", None)
    if code == CONTINUE_EXIT:
        return Verdict(JobState.TIMEOUT, code, "stopped before its walltime with a fresh "
                       "checkpoint (hpcnn's launcher)", None)
    last = marks.err_tail.splitlines()[-1] if marks.err_tail else ""
    parts = ["environment setup failed: " + last if marks.exit_info.get("phase") == "setup"
             else last]
    if marks.exit_info.get("signal") == "TERM":
        parts.insert(0, "stopped by SIGTERM (walltime or cancel)")
    parts.append(says)
    return Verdict(JobState.FAILED, code, "; ".join(part for part in parts if part), None)


def wait_for(
    conn: Connection,
    dialect: Dialect,
    job_id: str,
    job_dir: str,
    *,
    timeout: float,
    interval: float = 2.0,
    grace: float = 30.0,
    on_change: object = None,
) -> Verdict:
    """Poll one job until it finishes (used by ``doctor --probe``); returns the final verdict."""
    deadline = time.time() + timeout
    state, first_missing = JobState.QUEUED, None
    while True:
        observations, answered = poll(conn, dialect, [(job_id, job_dir)])
        verdict = decide(observations[job_id], answered=answered, previous=state,
                         first_missing_at=first_missing, grace=grace)
        if verdict.state != state and callable(on_change):
            on_change(verdict)
        state, first_missing = verdict.state, verdict.first_missing_at
        if state.finished or time.time() > deadline:
            return verdict
        time.sleep(interval)


def refresh(
    registry: Registry,
    conn: Connection,
    dialect: Dialect,
    rows: Sequence[JobRow],
    *,
    grace: float,
    now: float | None = None,
    extra: Sequence[str] = (),
) -> tuple[list[JobRow], dict[str, Observation], bool, list[str]]:
    """Poll the unfinished submitted jobs among ``rows`` (ONE remote command, with the
    ``extra`` snippets) and store their new states, so that the next process — a later
    ``status``, a cron ``sync`` — reaches the same verdict. Returns the rows as stored now, the
    observations by job name, whether the scheduler answered, and the extras' outputs."""
    now = time.time() if now is None else now
    live = [r for r in rows if r.scheduler_id and not JobState(r.state).finished]
    by_id, answered, extras = poll_with(conn, dialect, [(r.scheduler_id or "", r.job_dir)
                                                        for r in live], extra=extra)
    observed: dict[str, Observation] = {}
    verdicts = []
    for row in live:
        obs = by_id[row.scheduler_id or ""]
        observed[row.name] = obs
        verdict = decide(obs, answered=answered, previous=JobState(row.state),
                         first_missing_at=row.first_missing_at, grace=grace, now=now)
        verdicts.append((row.name, {"state": verdict.state.value, "exit_code": verdict.exit_code,
                                    "detail": verdict.detail,
                                    "first_missing_at": verdict.first_missing_at}))
    registry.update_many(verdicts)
    stored = {r.name: r for run in {r.run for r in rows} for r in registry.jobs(run)}
    return [stored.get(r.name, r) for r in rows], observed, answered, extras


def read_log(conn: Connection, job_dir: str, which: str = "out", tail: int | None = None) -> str:
    """A job's ``out.log`` or ``err.log`` (its last ``tail`` lines); "" when not written yet."""
    path = shlex.quote(posixpath.join(job_dir, f"{which}.log"))
    line = f"tail -n {int(tail)} {path}" if tail else f"cat {path}"
    res = conn.run_shell(f"test -e {path} || exit 0; {line}", check=False)
    return res.stdout
