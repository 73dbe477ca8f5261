"""``hpcnn status`` and ``hpcnn runs``: where every fold stands, from ONE remote round trip.

The round trip (one command over the session's one connection) carries the scheduler's status
call for the run's unfinished jobs, every polled job's markers, and per fold the markers of its
attempts and the tails of its training logs. The fold's state comes from its attempts together
(hpcnn.jobs.folds); epochs, pseudo-Dice and the pace from nnU-Net's logs of all attempts merged
(hpcnn.nnunet.training_log).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from datetime import datetime

from hpcnn.config import Config
from hpcnn.errors import EXIT_FAILED, EXIT_OK, EXIT_RUNNING, EXIT_UNREACHABLE
from hpcnn.jobs import engine, vmem
from hpcnn.jobs.engine import BLOCKED_EXIT
from hpcnn.jobs.folds import FoldView, continuations, fold_views
from hpcnn.jobs.model import FOLD, Run
from hpcnn.jobs.plan import waiting_for
from hpcnn.nnunet.training_log import LOG_GLOB, TrainingLog, parse_texts
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.state import JobRow, RunRow
from hpcnn.workspace import RESULTS

_HELD_BACK = (JobState.QUEUED, JobState.HELD, JobState.CANCELLED)
"""Fold states that may mean "a job it needs did not complete" (status then names it)."""

LOG_TAIL_LINES = 400
"""Lines of each training log read per fold (about 50 epochs): enough for the pace and the last
pseudo-Dice without moving whole logs on every poll."""

_GPU_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError", re.I)

HINTS = [
    (_GPU_OOM,
     "the GPU ran out of memory: ask for a GPU with more memory (resources.extra_directives / "
     "queue), or train a configuration with smaller patches"),
    (re.compile(r"Background workers are no longer alive", re.I),
     "nnU-Net's data-augmentation workers died, usually killed by the job's memory limit: raise "
     "resources.mem or lower training.data_augmentation_workers"),
    (re.compile(r"EnvironmentNameNotFound|Could not find conda environment|conda: command not "
                r"found|module: command not found|Unable to locate a modulefile|"
                r"environment setup failed", re.I),
     "environment.setup could not prepare the job: check the conda environment or module name "
     "(`hpcnn doctor` runs the same lines)"),
    (re.compile(r"No module named '?nnunetv2|nnUNetv2_\w+: command not found", re.I),
     "nnunetv2 is not installed where the job ran: fix environment.setup (`hpcnn doctor`)"),
    (re.compile(r"nnUNet_(raw|preprocessed|results) is not defined|No such file or directory:"
                r".*nnUNet_preprocessed", re.I),
     "the job found no preprocessed data: run `hpcnn push` (or train-all-folds) again"),
    (re.compile(r"preprocessed with nnunetv2|version mismatch|unexpected keyword|blosc2", re.I),
     "the nnunetv2 that runs the job differs from the one that preprocessed the data: use the "
     "same version on both sides"),
]


SIGNAL_EXITS = {137: "SIGKILL", 143: "SIGTERM"}
"""A shell's exit status for a job killed by a signal (128 + its number)."""


def hint_for(state: JobState, text: str, exit_code: int | None = None, *,
             cfg: Config | None = None, dialect: str = "") -> str:
    """The fix for a failed job from its error text and exit status; ``cfg`` and ``dialect``
    make a refused allocation's fix say what to raise there (Grid Engine's h_vmem)."""
    if cfg is not None and vmem.ALLOCATION_FAILED.search(text) and not _GPU_OOM.search(text):
        return vmem.memory_hint(cfg, dialect)
    for pattern, hint in HINTS:
        if pattern.search(text):
            return hint
    if state == JobState.FAILED and exit_code in SIGNAL_EXITS:
        return (f"the job was stopped by {SIGNAL_EXITS[exit_code]}, which hpcnn did not send: "
                "cancelled outside hpcnn (scancel/qdel), preempted, or killed on its node; "
                "`hpcnn train-all-folds --resubmit-failed` continues it from its last checkpoint")
    if state == JobState.TIMEOUT:
        return ("the fold used every attempt: raise resources.walltime or "
                "training.max_resubmits, then `hpcnn train-all-folds --resubmit-failed`")
    if state == JobState.LOST:
        return ("the job left the queue without an exit marker (node failure, or removed by an "
                "admin): `hpcnn train-all-folds --resubmit-failed` continues it")
    return ""


@dataclass
class Attempt:
    attempt: int
    started: dict[str, str] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    err_tail: str = ""

    def seconds(self, now: datetime) -> float:
        try:
            start = datetime.fromisoformat(self.started["time"].replace("Z", "+00:00"))
        except (KeyError, ValueError):
            return 0.0
        end_text = self.ended.get("time")
        end = datetime.fromisoformat(end_text.replace("Z", "+00:00")) if end_text else now
        return max(0.0, (end - start).total_seconds())


@dataclass
class FoldStatus:
    view: FoldView
    log: TrainingLog
    attempts: list[Attempt]
    err_tail: str = ""
    hint: str = ""
    gpus: int = 0

    @property
    def node(self) -> str:
        for attempt in reversed(self.attempts):
            if attempt.started.get("host"):
                return attempt.started["host"]
        return ""

    def gpu_hours(self, now: datetime) -> float:
        return sum(a.seconds(now) for a in self.attempts) / 3600 * self.gpus


@dataclass
class RunStatus:
    run: Run
    row: RunRow
    folds: list[FoldStatus]
    answered: bool

    @property
    def exit_code(self) -> int:
        """The shared scheme: 0 all completed, 10 some queued/running, 11 some failed, lost or
        cancelled (or out of attempts), 3 the scheduler did not answer."""
        states = {f.view.state for f in self.folds}
        if states & {JobState.FAILED, JobState.LOST, JobState.CANCELLED, JobState.TIMEOUT}:
            return EXIT_FAILED
        if JobState.UNKNOWN in states and not self.answered:
            return EXIT_UNREACHABLE
        if states - {JobState.COMPLETED}:
            return EXIT_RUNNING
        return EXIT_OK


def _fold_snippet(session: Session, run: Run, fold: int, rows: list[JobRow]) -> str:
    """One fold's part of the round trip: every attempt's markers, then its logs' tails (no
    process for a file that is not there yet: most attempts of a long chain are queued)."""
    folder = shlex.quote(session.remote.path(RESULTS, run.results_folder, f"fold_{fold}"))
    rows = sorted(rows, key=lambda r: r.attempt)
    assign, words = engine.dir_words([row.job_dir for row in rows], "_hpcnn_attempts")
    parts = [assign, f'_hpcnn_attempt() {{ echo "==> attempt $1"; {engine.READ} "$2"/started; '
                     f'echo "==> ended"; {engine.TAIL} +2 "$2"/exit_code; '
                     f'echo "==> err"; {engine.TAIL} 8 "$2"/err.log; }}']
    parts += [f"_hpcnn_attempt {row.attempt} {word}" for row, word in zip(rows, words, strict=True)]
    parts.append(f"for f in {folder}/{LOG_GLOB}; do [ -e \"$f\" ] || continue; "
                 f'echo "==> log ${{f##*/}}"; tail -n {LOG_TAIL_LINES} "$f"; done')
    return "; ".join(parts)


def _parse_fold(text: str) -> tuple[list[Attempt], TrainingLog]:
    attempts: list[Attempt] = []
    logs: list[tuple[str, list[str]]] = []
    target: list[str] | None = None
    ended = False
    err: list[str] = []
    for line in text.splitlines():
        if line.startswith("==> attempt "):
            attempts.append(Attempt(int(line.split()[-1])))
            ended, target = False, None
        elif line == "==> ended":
            ended = True
        elif line == "==> err":
            err, target = [], []
            attempts[-1].err_tail = ""
            target = err
        elif target is err and not line.startswith("==> "):
            err.append(line)
            attempts[-1].err_tail = "\n".join(err)
        elif line.startswith("==> log "):
            logs.append((line[len("==> log "):], []))
            target = logs[-1][1]
        elif target is not None and target is not err:
            target.append(line)
        elif attempts and "=" in line:
            key, _, value = line.partition("=")
            (attempts[-1].ended if ended else attempts[-1].started)[key] = value
    return attempts, parse_texts((name, "\n".join(lines)) for name, lines in logs)


def experiment_status(session: Session, run_id: str | None = None,
                      configurations: list[str] | None = None) -> list[RunStatus]:
    """``run_status`` of each run ``status`` shows (``Session.experiment_runs``): the most
    recent experiment's configurations, or those asked for, all in ONE remote round trip."""
    return runs_status(session, session.experiment_runs(run_id, configurations))


def worst_exit(statuses: list[RunStatus]) -> int:
    """One exit code for several runs: failed, else unreachable, else running, else done."""
    codes = {s.exit_code for s in statuses}
    for code in (EXIT_FAILED, EXIT_UNREACHABLE, EXIT_RUNNING):
        if code in codes:
            return code
    return EXIT_OK


def run_status(session: Session, run_id: str | None = None, *,
               found: tuple[Run, RunRow] | None = None) -> RunStatus:
    """Refresh the run's jobs and read every fold's progress, in one remote round trip."""
    return runs_status(session, [found or session.find_run(run_id)])[0]


def runs_status(session: Session, runs: list[tuple[Run, RunRow]]) -> list[RunStatus]:
    """Refresh the jobs of ``runs`` and read every fold's progress: ONE remote command for all
    of them (the scheduler's status call, the markers, the training logs' tails)."""
    per_run = []
    snippets: list[str] = []
    every: list[JobRow] = []
    for run, row in runs:
        rows = [r for r in session.registry.jobs(run.id) if r.kind == FOLD]
        folds = sorted({r.fold for r in rows if r.fold is not None})
        snippets += [_fold_snippet(session, run, f, [r for r in rows if r.fold == f])
                     for f in folds]
        per_run.append((run, row, rows, len(folds)))
        every += rows
    stored, _, answered, extras = engine.refresh(
        session.registry, session.conn, session.dialect, every,
        grace=session.cfg.status.lost_grace, extra=snippets)
    by_name = {r.name: r for r in stored}
    result = []
    for run, row, rows, count in per_run:
        texts, extras = extras[:count], extras[count:]
        result.append(_run_status(session, run, row, [by_name.get(r.name, r) for r in rows],
                                  texts, answered))
    return result


def _run_status(session: Session, run: Run, row: RunRow, rows: list[JobRow], extras: list[str],
                answered: bool) -> RunStatus:
    result = []
    gpus = session.cfg.resources.gpus
    for view, text in zip(fold_views(rows, continuations(session.registry, run.id)), extras,
                          strict=True):
        attempts, log = _parse_fold(text)
        err = next((a.err_tail for a in attempts if a.attempt == view.attempt), "")
        hint = ""
        if view.state in _HELD_BACK or view.exit_code == BLOCKED_EXIT:
            waits = waiting_for(session.registry, view.row)
            if waits:
                view = replace(view, detail="; ".join(p for p in (view.detail, waits) if p))
                hint = ("`hpcnn train-all-folds --resubmit-failed` resubmits the fold it waits "
                        "on, and then this one") if view.state.finished or "never" in (
                            view.detail.lower()) else ""
        if not hint and view.state in (JobState.FAILED, JobState.LOST, JobState.TIMEOUT):
            hint = hint_for(view.state, f"{view.detail}\n{err}", view.exit_code,
                            cfg=session.cfg, dialect=session.dialect.name)
        result.append(FoldStatus(view, log, attempts, err.strip(), hint, gpus))
    return RunStatus(run, row, result, answered)


def runs_overview(session: Session) -> list[tuple[RunRow, list[FoldView]]]:
    """Every run of the workspace, most recent first, with its folds' states as last recorded
    (no remote call: ``hpcnn status`` refreshes them)."""
    registry = session.recorded
    if registry is None:
        return []
    return [(row, fold_views([r for r in registry.jobs(row.id) if r.kind == FOLD],
                             continuations(registry, row.id)))
            for row in registry.runs()]
