"""A fold's state from its attempts: the chain of jobs that trains one fold across walltimes.

A fold is submitted as a chain: a first attempt, then continuation attempts, each queued
``afterany`` the one before. A continuation first runs a guard: it exits at once with
``SKIPPED_EXIT`` when the attempt before it failed for a reason a continuation cannot fix
(anything but a walltime stop), and hpcnn's launcher exits 0 at once when the fold is already
complete. So the fold's state is told by its attempts together, not by the last one alone.

A fold may hold several chains: ``--resubmit-failed`` and ``--fresh`` start a new one after
the old one ended (attempts 5-8 after 1-4). The new chain's first attempt depends on no attempt
before it, so its guard never reads the old chain's failure, and the fold's state is told by
its NEWEST chain only: what the user asked for last, not the failure it replaced.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from hpcnn.jobs.engine import CONTINUE_EXIT
from hpcnn.schedulers.base import JobState
from hpcnn.state import JobRow, Registry

SKIPPED_EXIT = 98
"""A continuation's guard: the attempt before it failed, so this one did not train."""

CONTINUES = "afterany"
"""The dependency kind of a continuation on the attempt before it (and of nothing else in a
fold's chain: a chain's first attempt waits at most ``afterok`` for the preprocessing job)."""

CONTINUE_GUARD = f"""\
m="$1/exit_code"
[ -f "$m" ] || exit 0  # killed without a marker (SIGKILL at walltime): continue
code=$(head -n 1 "$m")
case "$code" in 0|{CONTINUE_EXIT}|143|271) exit 0 ;; esac
grep -q '^signal=TERM' "$m" && exit 0
echo "hpcnn: not continuing: the previous attempt failed with exit $code ($1)" >&2
exit {SKIPPED_EXIT}
"""
"""``bash -c GUARD _ PREVIOUS_JOB_DIR``: passes unless the previous attempt truly failed."""

_WAITING = (JobState.PENDING, JobState.QUEUED, JobState.HELD)


@dataclass(frozen=True)
class FoldView:
    fold: int
    state: JobState
    exit_code: int | None
    attempt: int
    """The attempt that tells the state."""
    attempts: int
    """The fold's attempts so far, over all its chains (the highest attempt number)."""
    row: JobRow
    detail: str
    chain_first: int = 1
    """The first attempt of the newest chain, the one that tells the state."""


def continuations(registry: Registry, run: str) -> set[str]:
    """The names of the run's jobs that continue the attempt before them (one query)."""
    return {job for job, deps in registry.run_dependencies(run).items()
            if any(kind == CONTINUES for _, kind in deps)}


def newest_chain(rows: Sequence[JobRow], continuing: Collection[str] | None) -> list[JobRow]:
    """The attempts of a fold's newest chain, by attempt: from the last attempt that continues
    nothing on. ``continuing`` None: every attempt after the first continues the one before."""
    chain = sorted(rows, key=lambda r: r.attempt)
    if continuing is None:
        return chain
    starts = [i for i, r in enumerate(chain) if r.name not in continuing]
    return chain[starts[-1]:] if starts else chain


def fold_view(rows: Sequence[JobRow], continuing: Collection[str] | None = None) -> FoldView:
    """The state of one fold from its attempt rows (sorted or not), told by its newest chain
    (``continuing``: the names of the attempts that continue the one before them, from
    ``continuations``; None: the rows are one chain)."""
    chain = newest_chain(rows, continuing)
    states = [JobState(r.state) for r in chain]
    fold = chain[0].fold if chain[0].fold is not None else -1
    attempts = max(r.attempt for r in rows)

    def view(i: int, state: JobState | None = None, detail: str | None = None) -> FoldView:
        row = chain[i]
        return FoldView(fold, state or states[i], row.exit_code, row.attempt, attempts, row,
                        row.detail or "" if detail is None else detail, chain[0].attempt)

    for i, state in enumerate(states):
        if state == JobState.COMPLETED:
            return view(i)
    for i, state in enumerate(states):
        if state in (JobState.RUNNING, JobState.UNKNOWN):
            return view(i)
    told = [i for i, (r, s) in enumerate(zip(chain, states, strict=True))
            if s not in _WAITING and r.exit_code != SKIPPED_EXIT]
    waiting = [i for i, s in enumerate(states) if s in _WAITING]
    if not told:
        return view(waiting[0] if waiting else 0)
    last = told[-1]
    later_waiting = [i for i in waiting if i > last]
    if states[last] == JobState.TIMEOUT and later_waiting:
        nxt = later_waiting[0]
        return view(nxt, JobState.QUEUED if states[nxt] != JobState.HELD else JobState.HELD,
                    f"attempt {chain[last].attempt} stopped at its walltime; attempt "
                    f"{chain[nxt].attempt} continues it")
    if states[last] == JobState.TIMEOUT:
        return view(last, detail=f"stopped at the walltime after {len(chain)} attempt(s): "
                                 "training.max_resubmits is used up")
    return view(last)


def fold_views(rows: Sequence[JobRow],
               continuing: Collection[str] | None = None) -> list[FoldView]:
    """One view per fold of a run's fold jobs, by fold number (``continuing`` as for
    ``fold_view``)."""
    by_fold: dict[int, list[JobRow]] = {}
    for row in rows:
        if row.fold is not None:
            by_fold.setdefault(row.fold, []).append(row)
    return [fold_view(by_fold[f], continuing) for f in sorted(by_fold)]
