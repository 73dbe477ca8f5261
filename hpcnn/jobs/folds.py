"""A fold's state from its attempts: the chain of jobs that trains one fold across walltimes.

A fold is submitted as a chain: attempt 1, then continuation attempts, each queued ``afterany``
the one before. A continuation first runs a guard: it exits at once with ``SKIPPED_EXIT`` when the
attempt before it failed for a reason a continuation cannot fix (anything but a walltime stop),
and hpcnn's launcher exits 0 at once when the fold is already complete. So the fold's state is
told by its attempts together, not by the last one alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcnn.jobs.engine import CONTINUE_EXIT
from hpcnn.schedulers.base import JobState
from hpcnn.state import JobRow

SKIPPED_EXIT = 98
"""A continuation's guard: the attempt before it failed, so this one did not train."""

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
    """Attempts in the chain (submitted or planned)."""
    row: JobRow
    detail: str


def fold_view(rows: Sequence[JobRow]) -> FoldView:
    """The state of one fold from its attempt rows (sorted or not)."""
    chain = sorted(rows, key=lambda r: r.attempt)
    states = [JobState(r.state) for r in chain]
    fold = chain[0].fold if chain[0].fold is not None else -1

    def view(i: int, state: JobState | None = None, detail: str | None = None) -> FoldView:
        row = chain[i]
        return FoldView(fold, state or states[i], row.exit_code, row.attempt, len(chain), row,
                        row.detail or "" if detail is None else detail)

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


def fold_views(rows: Sequence[JobRow]) -> list[FoldView]:
    """One view per fold of a run's fold jobs, by fold number."""
    by_fold: dict[int, list[JobRow]] = {}
    for row in rows:
        if row.fold is not None:
            by_fold.setdefault(row.fold, []).append(row)
    return [fold_view(by_fold[f]) for f in sorted(by_fold)]
