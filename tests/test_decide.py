"""``decide`` over hand-built observations: every combination that changes what a user is told
(scheduler state, answered or not, exit marker present/absent/partial, signal, phase, walltime
used, a start before a requeue, a cancel recorded by hpcnn) with the exact state, exit code,
detail and lost clock expected. Fast: no scheduler, no files."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hpcnn.jobs.engine import Markers, Observation, Verdict, _parse_markers, decide, this_start
from hpcnn.schedulers.base import JobState as S
from hpcnn.schedulers.base import SchedulerJob

T0 = "2026-03-04T09:00:00Z"
NOW, GRACE = 10_000.0, 30.0


def at(seconds: int) -> str:
    """T0 + seconds, as the job body writes ``time=``."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"2026-03-04T{9 + h:02d}:{m:02d}:{s:02d}Z"


def begun(walltime: str = "3600", time: str = T0) -> dict[str, str]:
    return {"host": "gpu07", "time": time, "jobid": "7", "walltime": walltime, "pid": "42"}


def marks(code: int | None = None, *, ran: int = 60, signal: str = "", phase: str = "run",
          err: str = "", walltime: str = "3600", started: bool = True) -> Markers:
    info = {"phase": phase, "signal": signal, "time": at(ran)} if code is not None else {}
    return Markers(started=begun(walltime) if started else {}, exit_code=code, exit_info=info,
                   err_tail=err)


def sj(state: S, code: int | None = None, reason: str | None = None,
       raw: str | None = None) -> SchedulerJob:
    return SchedulerJob("7", state, exit_code=code, reason=reason, raw_state=raw)


@dataclass(frozen=True)
class Case:
    sched: SchedulerJob | None
    markers: Markers
    expected: tuple[S, int | None, str, float | None]
    answered: bool = True
    previous: S = S.RUNNING
    first_missing_at: float | None = None


OOM = sj(S.FAILED, 137, "OutOfMemory", "OUT_OF_MEMORY")
PBS_MEM = sj(S.FAILED, -27, "killed by the batch system: JOB_EXEC_KILL_MEM, over its memory "
             "limit (exit -27)", "F")
TRACE = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory"
SIGTERM = "stopped by SIGTERM (walltime or cancel)"
WAITING = "not in the queue; waiting for its exit marker"

CASES: dict[str, Case] = {
    # --- an exit marker: it says how the job ended
    "exit 0, scheduler completed": Case(sj(S.COMPLETED, 0), marks(0), (S.COMPLETED, 0, "", None)),
    "exit 0, scheduler forgot the job": Case(None, marks(0), (S.COMPLETED, 0, "", None)),
    "exit 0, scheduler did not answer": Case(None, marks(0), (S.COMPLETED, 0, "", None),
                                             answered=False),
    "exit 0, record cut (scheduler unknown)": Case(sj(S.UNKNOWN), marks(0),
                                                   (S.COMPLETED, 0, "", None)),
    "exit 3 while the scheduler still runs it": Case(
        sj(S.RUNNING, raw="COMPLETING"), marks(3), (S.RUNNING, None, "exiting (exit code 3)",
                                                    None)),
    "exit 143, scheduler says timeout": Case(
        sj(S.TIMEOUT, 143, "TimeLimit"), marks(143, signal="TERM"),
        (S.TIMEOUT, 143, "TimeLimit", None)),
    "exit 143, scheduler says cancelled": Case(
        sj(S.CANCELLED), marks(143, signal="TERM"), (S.CANCELLED, 143, "", None)),
    "SIGTERM at 95% of the walltime": Case(
        None, marks(143, signal="TERM", ran=3420), (S.TIMEOUT, 143, "stopped at its walltime",
                                                    None)),
    "SIGTERM just before 95% of the walltime": Case(
        None, marks(143, signal="TERM", ran=3419, err="Terminated"),
        (S.FAILED, 143, f"{SIGTERM}; Terminated", None)),
    "exit 0 after 99% of the walltime, no signal": Case(
        sj(S.COMPLETED, 0), marks(0, ran=3590), (S.COMPLETED, 0, "", None)),
    "SIGTERM, walltime unknown": Case(
        None, marks(143, signal="TERM", ran=3590, walltime=""), (S.FAILED, 143, SIGTERM, None)),
    "SIGTERM, no walltime recorded": Case(
        None, Markers(started={"time": T0}, exit_code=143,
                      exit_info={"signal": "TERM", "time": at(3590)}),
        (S.FAILED, 143, SIGTERM, None)),
    "SIGTERM, start time unreadable": Case(
        None, Markers(started={**begun(), "time": "soon"}, exit_code=143,
                      exit_info={"signal": "TERM", "time": at(3590)}),
        (S.FAILED, 143, SIGTERM, None)),
    "SIGTERM, no exit time": Case(
        None, Markers(started=begun(), exit_code=143, exit_info={"signal": "TERM"}),
        (S.FAILED, 143, SIGTERM, None)),
    "launcher's continue-me exit": Case(
        sj(S.FAILED, 75), marks(75),
        (S.TIMEOUT, 75, "stopped before its walltime with a fresh checkpoint (hpcnn's launcher)",
         None)),
    "setup failed": Case(
        sj(S.FAILED, 97), marks(97, phase="setup", err="x\nmodule: command not found"),
        (S.FAILED, 97, "environment setup failed: module: command not found; the scheduler "
         "says failed", None)),
    "setup failed, nothing on stderr": Case(
        None, marks(97, phase="setup"), (S.FAILED, 97, "environment setup failed: ", None)),
    "SIGTERM during setup": Case(
        None, marks(143, phase="setup", signal="TERM", err="loading"),
        (S.FAILED, 143, f"{SIGTERM}; environment setup failed: loading", None)),
    "run failed, last line of stderr": Case(
        None, marks(1, err=TRACE), (S.FAILED, 1, "RuntimeError: CUDA out of memory", None)),
    "run failed, empty stderr": Case(None, marks(1), (S.FAILED, 1, "", None)),
    "run failed, scheduler did not answer": Case(
        None, marks(2, err="boom"), (S.FAILED, 2, "boom", None), answered=False),
    "memory kill beside exit 0 (Slurm)": Case(
        OOM, marks(0), (S.COMPLETED, 0, "warning: the scheduler says OUT_OF_MEMORY "
                        "(OutOfMemory)", None)),
    "memory kill beside exit 0 (PBS Pro -27)": Case(
        PBS_MEM, marks(0), (S.COMPLETED, 0, "warning: the scheduler says F (killed by the batch "
                            "system: JOB_EXEC_KILL_MEM, over its memory limit (exit -27))",
                            None)),
    "memory kill beside exit 137": Case(
        OOM, marks(137, err="Killed"),
        (S.FAILED, 137, "Killed; the scheduler says OUT_OF_MEMORY (OutOfMemory)", None)),
    # --- markers of an earlier start of the same job id (requeue)
    "requeued: waiting again, old exit marker": Case(
        sj(S.QUEUED, raw="PENDING", reason="BeginTime"), marks(143, signal="TERM"),
        (S.QUEUED, None, "BeginTime", None)),
    "requeued: held again, old exit marker": Case(
        sj(S.HELD, raw="SPECIAL_EXIT"), marks(0), (S.HELD, None, "", None)),
    "requeued: running again, exit marker older than started": Case(
        sj(S.RUNNING), Markers(started=begun(time=at(600)), exit_code=143,
                               exit_info={"signal": "TERM", "time": at(500)}),
        (S.RUNNING, None, "", None)),
    "exit marker in the same second as started": Case(
        None, Markers(started=begun(), exit_code=0, exit_info={"time": T0}),
        (S.COMPLETED, 0, "", None)),
    # --- no exit marker: the scheduler's word, or the lost clock
    "no answer": Case(None, marks(), (S.UNKNOWN, None, "scheduler did not answer", 123.0),
                      answered=False, first_missing_at=123.0),
    "no answer, the scheduler's last word is ignored": Case(
        sj(S.RUNNING), marks(), (S.UNKNOWN, None, "scheduler did not answer", None),
        answered=False),
    "queued with a reason": Case(sj(S.QUEUED, reason="Priority"), marks(started=False),
                                 (S.QUEUED, None, "Priority", None), previous=S.QUEUED),
    "running, no reason": Case(sj(S.RUNNING), marks(), (S.RUNNING, None, "", None)),
    "record cut: unknown": Case(sj(S.UNKNOWN, reason="cut off"), marks(),
                                (S.UNKNOWN, None, "cut off", None)),
    "scheduler completed with exit 3": Case(
        sj(S.COMPLETED, 3, "NonZeroExitCode"), marks(), (S.FAILED, 3, "NonZeroExitCode", None)),
    "scheduler completed with exit 3, no reason": Case(sj(S.COMPLETED, 3), marks(),
                                                       (S.FAILED, 3, "", None)),
    "scheduler completed with exit 0": Case(sj(S.COMPLETED, 0), marks(),
                                            (S.COMPLETED, 0, "", None)),
    "scheduler completed without a code": Case(sj(S.COMPLETED), marks(),
                                               (S.COMPLETED, None, "", None)),
    "scheduler failed, signal": Case(sj(S.FAILED, 271, "killed by signal 15"), marks(),
                                     (S.FAILED, 271, "killed by signal 15", None)),
    "scheduler timeout": Case(sj(S.TIMEOUT, -11, "walltime exceeded"), marks(),
                              (S.TIMEOUT, -11, "walltime exceeded", None)),
    "gone, already finished": Case(None, marks(), (S.FAILED, None, "", 50.0),
                                   previous=S.FAILED, first_missing_at=50.0),
    "gone, first seen missing now": Case(None, marks(), (S.RUNNING, None, WAITING, NOW)),
    "gone while queued": Case(None, marks(started=False), (S.QUEUED, None, WAITING, NOW),
                              previous=S.QUEUED),
    "gone, never submitted before": Case(None, marks(started=False),
                                         (S.UNKNOWN, None, WAITING, NOW), previous=S.PENDING),
    "gone one second short of the grace": Case(
        None, marks(), (S.RUNNING, None, WAITING, NOW - GRACE + 1),
        first_missing_at=NOW - GRACE + 1),
    "gone for the whole grace after it started": Case(
        None, marks(), (S.LOST, None, "left the queue after it started and wrote no exit marker",
                        NOW - GRACE), first_missing_at=NOW - GRACE),
    "gone for the whole grace before it started": Case(
        None, marks(started=False),
        (S.LOST, None, "left the queue before it started and wrote no exit marker", NOW - 99),
        previous=S.QUEUED, first_missing_at=NOW - 99),
    # --- a cancel hpcnn recorded: cancelled, whatever the scheduler shows next
    "cancelled: SIGTERM exit (Torque C 271)": Case(
        sj(S.FAILED, 271, "killed by signal 15", "C"), marks(143, signal="TERM"),
        (S.CANCELLED, 143, f"{SIGTERM}; the scheduler says C (killed by signal 15)", None),
        previous=S.CANCELLED),
    "cancelled: signal exit without marker": Case(
        sj(S.FAILED, 271, "killed by signal 15"), marks(),
        (S.CANCELLED, 271, "killed by signal 15", None), previous=S.CANCELLED),
    "cancelled: vanished without marker": Case(
        None, marks(), (S.CANCELLED, None, "cancelled", NOW - 999), previous=S.CANCELLED,
        first_missing_at=NOW - 999),
    "cancelled: still exiting": Case(
        sj(S.RUNNING, raw="E"), marks(), (S.CANCELLED, None, "cancelled", None),
        previous=S.CANCELLED),
    "cancelled: no answer": Case(None, marks(), (S.CANCELLED, None, "scheduler did not answer",
                                                 None), answered=False, previous=S.CANCELLED),
    "cancelled after it had completed": Case(
        sj(S.COMPLETED, 0), marks(0), (S.COMPLETED, 0, "", None), previous=S.CANCELLED),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decide(name: str) -> None:
    case = CASES[name]
    verdict = decide(Observation(case.sched, case.markers), answered=case.answered,
                     previous=case.previous, first_missing_at=case.first_missing_at,
                     grace=GRACE, now=NOW)
    assert verdict == Verdict(*case.expected)


def test_decide_reads_the_clock_when_not_given_one() -> None:
    import time

    before = time.time()
    verdict = decide(Observation(None, marks()), answered=True, previous=S.RUNNING,
                     first_missing_at=None, grace=GRACE)
    assert verdict.state == S.RUNNING and before <= (verdict.first_missing_at or 0) <= time.time()


def test_this_start_keeps_markers_of_the_current_start() -> None:
    current = marks(3, ran=100, err="e")
    assert this_start(Observation(sj(S.COMPLETED, 3), current)) == current
    assert this_start(Observation(sj(S.QUEUED), current)) == Markers()
    requeued = Markers(started=begun(time=at(600)), exit_code=3, exit_info={"time": at(500)},
                       err_tail="e")
    assert this_start(Observation(sj(S.RUNNING), requeued)) == Markers(
        started=begun(time=at(600)), exit_code=None, exit_info={}, err_tail="e")


SEP = "__HPCNN_{}__"


def poll_text(*jobs: tuple[str, str, str]) -> str:
    """What the poll command prints after the status call: per job its started marker, its
    exit marker and the tail of err.log."""
    return "".join(f"\n{SEP.format('JOB')} {i}\n{started}\n{SEP.format('EXIT')}\n{exit_}\n"
                   f"{SEP.format('ERR')}\n{err}" for i, (started, exit_, err) in enumerate(jobs))


def test_markers_read_whole_partial_and_absent() -> None:
    text = poll_text(
        (f"host=n1\ntime={T0}\njobid=7\nwalltime=3600", f"143\nphase=run\nsignal=TERM\ntime={T0}",
         "a\nKilled\n"),
        ("host=n2", "", ""),  # started, still running: no exit marker yet
        ("", "1", ""),  # an exit marker without its details
        ("", "garbage\nphase=run", "x"),  # an exit marker whose code is unreadable
    ) + f"\n{SEP.format('JOB')} 9\nhost=elsewhere\n"  # an index hpcnn did not ask for
    first, running, bare, broken, absent = _parse_markers(text, 5)
    assert first == Markers(started={"host": "n1", "time": T0, "jobid": "7",
                                     "walltime": "3600"},
                            exit_code=143,
                            exit_info={"phase": "run", "signal": "TERM", "time": T0},
                            err_tail="a\nKilled")
    assert (running.started, running.exit_code, running.has_started) == ({"host": "n2"}, None,
                                                                         True)
    assert (bare.exit_code, bare.exit_info, bare.has_started) == (1, {}, False)
    assert (broken.exit_code, broken.exit_info, broken.err_tail) == (None, {"phase": "run"}, "x")
    assert absent == Markers()
