"""The plan: an experiment's graph compared with the registry — what is done, what runs or
waits, what to submit, and what cannot start because a job it needs did not complete.

Pure: registry rows and the user's asks in, decisions out; nothing is submitted or written
here (hpcnn.jobs.submit applies a plan). Fold by fold it decides whether to submit a new chain
(attempt 1 and its walltime continuations, each ``afterany`` the one before), resubmit
(``--resubmit-failed``), retrain from scratch (``--fresh``), submit the rest of a chain whose
submission was interrupted, or leave the fold alone. A fold that needs other folds (a
3d_cascade_fullres fold needs the five 3d_lowres chains) is submitted only while each of them
may still complete; find_best_configuration is submitted (again) whenever a fold is.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hpcnn.errors import ConfigError
from hpcnn.jobs.folds import FoldView, fold_views, newest_chain
from hpcnn.jobs.graph import Graph, Node
from hpcnn.jobs.model import FIND_BEST, FOLD, PREP
from hpcnn.schedulers.base import JobState
from hpcnn.state import JobRow, Registry

RETRY = (JobState.FAILED, JobState.LOST, JobState.CANCELLED, JobState.TIMEOUT)
"""Fold states ``--resubmit-failed`` retries."""

SUBMIT, KEEP, BLOCKED = "submit", "keep", "blocked"
FRESH = "fresh"


class Asked(Protocol):
    """What the user asked of the jobs already there (train-all-folds' options)."""

    fresh: bool
    resubmit_failed: bool


@dataclass(frozen=True)
class Chain:
    """One fold's jobs to submit: attempts ``first`` .. ``first + length - 1``."""

    fold: int
    first: int
    length: int
    why: str
    after: str | None = None
    """The scheduler id of the attempt this chain continues (``afterany``), if any."""
    resume: bool = False
    """Its first attempt resumes the fold from its checkpoint (``--c``); attempts after the
    first, and a chain that continues another (``after``), always do."""

    @property
    def may_resume(self) -> bool:
        """A chain whose first attempt starts the fold again, but not from scratch: it resumes
        from a checkpoint that the fold may have (not ``--fresh``, whose old folder is moved
        aside)."""
        return self.after is None and self.why != FRESH


def plan(views: dict[int, FoldView], folds: list[int], opts: Asked,
         chain_length: int) -> tuple[list[Chain], list[FoldView]]:
    """Which folds of one run get a new chain, and which keep the jobs they have."""
    chains, kept = [], []
    for fold in folds:
        view = views.get(fold)
        if view is None:
            chains.append(Chain(fold, 1, chain_length, "new"))
        elif opts.fresh:
            if not view.state.finished:
                raise ConfigError(
                    f"fold {fold} is {view.state} (job {view.row.name}): --fresh would train it "
                    "twice at once", hint="cancel it first (`hpcnn cancel --folds "
                                          f"{fold}`), then run --fresh again")
            chains.append(Chain(fold, view.attempts + 1, chain_length, FRESH))
        elif opts.resubmit_failed and view.state in RETRY:
            # resume: as far as the plan knows (a dry run); the submission looks
            # (services.train.with_checkpoints)
            chains.append(Chain(fold, view.attempts + 1, chain_length, f"was {view.state}",
                                resume=True))
        else:
            kept.append(view)
    return chains, kept


def unfinished_chains(rows: list[JobRow], continuing: Collection[str], kept: list[FoldView],
                      chain_length: int) -> list[Chain]:
    """The rest of a chain whose continuations were never submitted (hpcnn stopped in the
    middle of submitting it): a fold still waiting or running with fewer attempts queued in its
    newest chain than ``chain_length`` (``continuing``: as ``folds.continuations``)."""
    rests = []
    for view in kept:
        if view.state.finished:
            continue
        chain = newest_chain([r for r in rows if r.fold == view.fold], continuing)
        present = chain[-1].attempt - chain[0].attempt + 1
        if present < chain_length and chain[-1].scheduler_id:
            rests.append(Chain(view.fold, chain[-1].attempt + 1, chain_length - present,
                               "rest of its chain", after=chain[-1].scheduler_id))
    return rests


@dataclass(frozen=True)
class Step:
    """One node's decision."""

    node: Node
    action: str
    chain: Chain | None = None
    """A fold's jobs to submit."""
    attempt: int = 1
    """Prep / find_best: the attempt to submit."""
    view: FoldView | None = None
    """A fold's state as the registry has it (kept or replaced)."""
    rows: tuple[JobRow, ...] = ()
    """The node's jobs already recorded, by attempt."""
    why: str = ""
    replaces: tuple[JobRow, ...] = ()
    """Unfinished jobs of the node that wait on jobs now replaced (a cascade fold held on a
    failed 3d_lowres fold that is resubmitted): cancelled before the new chain is submitted,
    so that it waits on the new jobs instead (nothing started, nothing submitted twice)."""

    @property
    def last(self) -> JobRow | None:
        """The node's last recorded job: what a dependent waits for when nothing new is
        submitted for it."""
        return self.rows[-1] if self.rows else None


@dataclass
class Plan:
    graph: Graph
    steps: dict[str, Step] = field(default_factory=dict)
    """By node key, in the graph's topological order."""

    @property
    def to_submit(self) -> list[Step]:
        return [s for s in self.steps.values() if s.action == SUBMIT]

    @property
    def blocked(self) -> list[Step]:
        return [s for s in self.steps.values() if s.action == BLOCKED]

    @property
    def kept_folds(self) -> list[Step]:
        return [s for s in self.steps.values()
                if s.action == KEEP and s.node.kind == FOLD and s.view is not None]


def _waiting_on(plan: Plan, node: Node) -> str | None:
    """Why ``node`` cannot be submitted: a fold it needs ended without completing (and is not
    resubmitted now) or is blocked itself; None when every fold it needs may still complete."""
    several = plan.graph.several
    for need in node.needs:
        step = plan.steps.get(need.node)
        needed = plan.graph.nodes[need.node]
        if step is None or needed.kind != FOLD or step.action == SUBMIT:
            continue
        if step.action == BLOCKED:
            return f"waits on {needed.label(several)}, which waits itself ({step.why})"
        view = step.view
        if view is not None and view.state.finished and view.state != JobState.COMPLETED:
            return (f"waits on {needed.label(several)}, which is {view.state} (job "
                    f"{view.row.name}): `hpcnn train-all-folds --resubmit-failed` resubmits "
                    "it, and this one after it")
    return None


def make_plan(graph: Graph, rows: Sequence[JobRow], opts: Asked, chain_length: int,
              continuing: Collection[str]) -> Plan:
    """The graph against the registry rows of its owners (every kind together);
    ``continuing``: the names of the jobs that continue the attempt before them
    (``folds.continuations`` of each owner)."""
    result = Plan(graph)
    by_run: dict[str, list[Node]] = {}
    for node in graph.folds():
        by_run.setdefault(node.owner, []).append(node)
    decided: dict[str, Step] = {}
    for run_id, nodes in by_run.items():
        fold_rows = [r for r in rows if r.run == run_id and r.kind == FOLD]
        views = {v.fold: v for v in fold_views(fold_rows, continuing)}
        chains, kept = plan(views, [n.fold for n in nodes if n.fold is not None], opts,
                            chain_length)
        chains += unfinished_chains(fold_rows, continuing, kept, chain_length)
        for node in nodes:
            mine = tuple(sorted((r for r in fold_rows if r.fold == node.fold),
                                key=lambda r: r.attempt))
            chain = next((c for c in chains if c.fold == node.fold), None)
            view = views.get(node.fold) if node.fold is not None else None
            decided[node.key] = (Step(node, SUBMIT, chain, view=view, rows=mine, why=chain.why)
                                 if chain else Step(node, KEEP, view=view, rows=mine))
    prep = graph.nodes.get(PREP)
    prep_step = _prep(prep, rows, opts) if prep is not None else None
    if prep_step is not None and prep_step.action == SUBMIT:
        result.steps[PREP] = prep_step
    for key, node in graph.nodes.items():
        if node.kind == FOLD:
            step = _relinked(result, decided[key], chain_length)
            if step.action == SUBMIT and step.chain and step.chain.after is None:
                why = (f"waits on preprocessing, which {prep_step.why}"
                       if prep_step is not None and prep_step.action == BLOCKED
                       else _waiting_on(result, node))
                if why:
                    step = Step(node, BLOCKED, view=step.view, rows=step.rows, why=why)
            result.steps[key] = step
        elif node.kind == FIND_BEST:
            result.steps[key] = _find_best(result, node, rows, opts)
    if prep is not None and prep_step is not None:
        if prep_step.action != SUBMIT:
            new = prep_step.action == KEEP and not prep_step.rows and result.to_submit
            result.steps[PREP] = Step(prep, SUBMIT, why="new") if new else prep_step
        result.steps = {k: result.steps[k] for k in graph.nodes if k in result.steps}
    return result


def _prep(node: Node, rows: Sequence[JobRow], opts: Asked) -> Step:
    """The preprocessing job on the cluster: kept while it is there and may complete (a new
    fold chain waits on it, ``afterok``, or on its exit marker once it ended); after a failure
    resubmitted with ``--resubmit-failed`` (and the folds with it), else every new fold chain
    is blocked naming it. KEEP without rows: submit it when anything else is."""
    mine = tuple(sorted((r for r in rows if r.run == node.owner and r.kind == PREP),
                        key=lambda r: r.attempt))
    if not mine:
        return Step(node, KEEP)
    last = JobState(mine[-1].state)
    if last not in RETRY:
        return Step(node, KEEP, rows=mine)
    if opts.resubmit_failed:
        return Step(node, SUBMIT, attempt=mine[-1].attempt + 1, rows=mine, why=f"was {last}")
    return Step(node, BLOCKED, rows=mine,
                why=f"is {last} (job {mine[-1].name}): `hpcnn train-all-folds "
                    "--resubmit-failed` resubmits it, and the folds after it")


def _renewed(plan: Plan, node: Node) -> list[str]:
    """The fold chains (and the preprocessing job) ``node`` needs that start anew in this
    plan."""
    return [n.node for n in node.needs
            if (s := plan.steps.get(n.node)) is not None and s.action == SUBMIT
            and (s.node.kind == PREP or (s.node.kind == FOLD and s.chain is not None
                                         and s.chain.after is None))]


def _unfinished(rows: Sequence[JobRow]) -> tuple[JobRow, ...]:
    return tuple(r for r in rows if r.scheduler_id and not JobState(r.state).finished)


def _relinked(plan: Plan, step: Step, chain_length: int) -> Step:
    """A kept fold still waiting on folds that are resubmitted now would wait on the old,
    failed jobs forever (Slurm: DependencyNeverSatisfied): it gets a new chain after the new
    ones, and its waiting jobs are cancelled."""
    view = step.view
    if step.action != KEEP or view is None or view.state.finished or not step.node.needs:
        return step
    renewed = _renewed(plan, step.node)
    waiting = _unfinished(step.rows)
    if not renewed or not waiting or view.state == JobState.RUNNING:
        return step
    labels = ", ".join(plan.graph.nodes[k].label(plan.graph.several) for k in renewed)
    why = f"waits on {labels}, resubmitted now"
    chain = Chain(view.fold, view.attempts + 1, chain_length, why)
    return Step(step.node, SUBMIT, chain, view=view, rows=step.rows, why=why, replaces=waiting)


def _find_best(plan: Plan, node: Node, rows: Sequence[JobRow], opts: Asked) -> Step:
    mine = tuple(sorted((r for r in rows if r.run == node.owner and r.kind == FIND_BEST),
                        key=lambda r: r.attempt))
    nxt = (mine[-1].attempt + 1) if mine else 1
    why = _waiting_on(plan, node)
    if why:
        return Step(node, BLOCKED, rows=mine, why=why)
    if any(s.node.kind == FOLD for s in plan.to_submit):
        return Step(node, SUBMIT, attempt=nxt, rows=mine, why="after the folds submitted now",
                    replaces=_unfinished(mine))
    if not mine:
        return Step(node, SUBMIT, attempt=1, rows=mine, why="new")
    last = JobState(mine[-1].state)
    if opts.resubmit_failed and last in RETRY:
        return Step(node, SUBMIT, attempt=nxt, rows=mine, why=f"was {last}")
    return Step(node, KEEP, rows=mine)


def waiting_for(registry: Registry, row: JobRow) -> str:
    """What keeps a job back: the jobs it needs (``afterok``) that have not completed, with
    their states (``waits on hpcnn-...-3d_lowres-f2-a4 (failed)``); "" when none."""
    missing = []
    for name, kind in registry.needed_jobs(row.name):
        other = registry.get(name)
        if kind == "afterok" and (other is None or other.state != JobState.COMPLETED.value):
            missing.append(f"{name} ({other.state if other else 'forgotten'})")
    return f"waits on {', '.join(missing)}" if missing else ""
