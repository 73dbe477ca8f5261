"""Submission: a plan's jobs in topological order, each job's intent recorded before the
scheduler's answer, and ONE reconciliation of a submission hpcnn did not live to record.

The registry's job rows are written here (and by the engine's polls and cancels), never by the
services: a service builds an experiment, asks for a plan and hands it over. Each job is
recorded as intent (state ``pending``, with what it waits for) before the scheduler call and
gets its id after; a refusal forgets the intent. A crash between the scheduler's answer and
the registry leaves intent without an id: ``reconcile`` reads the answer the engine kept in
the job's folder and records it, or forgets a job the scheduler never took — for fold chains,
preprocessing, find_best and prediction jobs alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hpcnn.errors import SchedulerError
from hpcnn.jobs import engine
from hpcnn.jobs.experiment import Experiment
from hpcnn.jobs.folds import CONTINUES
from hpcnn.jobs.graph import Node
from hpcnn.jobs.model import (
    FIND_BEST,
    FOLD,
    PREP,
    JobSpec,
    find_best_spec,
    fold_spec,
    prep_spec,
)
from hpcnn.jobs.plan import SUBMIT, Plan, Step
from hpcnn.jobs.script import render_job
from hpcnn.schedulers.base import Dependency, JobState
from hpcnn.state import ExperimentRow, JobRow, Registry, RunRow

if TYPE_CHECKING:
    from hpcnn.config import Config
    from hpcnn.remote.base import Connection
    from hpcnn.schedulers.base import Dialect
    from hpcnn.workspace import RemoteLayout

Echo = Callable[[str], None]


class Target(Protocol):
    """Where jobs go (a services Session is one): the registry, the one connection (opened
    on first use), the dialect and the remote layout."""

    @property
    def registry(self) -> Registry: ...

    @property
    def conn(self) -> Connection: ...

    @property
    def dialect(self) -> Dialect: ...

    @property
    def remote(self) -> RemoteLayout: ...


def reconcile(target: Target, rows: Sequence[JobRow], echo: Echo = print) -> list[JobRow]:
    """Jobs recorded as intent whose submission was never recorded: the scheduler may have
    accepted them before hpcnn stopped. Their job folder knows (one remote command for all);
    the others are forgotten. Returns ``rows`` as stored now (forgotten ones left out)."""
    pending = [r for r in rows if r.scheduler_id is None]
    if not pending:
        return list(rows)
    registry = target.registry
    found = engine.recover_submitted(target.conn, target.dialect, [r.job_dir for r in pending])
    for row in pending:
        job_id = found.get(row.job_dir)
        if job_id:
            echo(f"recovered job {row.name}: the scheduler had accepted it as {job_id}")
            registry.update(row.name, scheduler_id=job_id, state=JobState.QUEUED.value,
                            submitted_at=time.time())
        else:
            registry.forget(row.name)
    stored = [registry.get(r.name) for r in rows]
    return [r for r in stored if r is not None]


def submit_spec(target: Target, cfg: Config, spec: JobSpec,
                deps: Sequence[tuple[Dependency, str | None]], echo: Echo = print,
                what: str | None = None) -> JobRow:
    """Render and submit one job: its intent (with what it waits for: ``(dependency, name
    of the job depended on)``) recorded before the scheduler call and its id after (a refusal
    forgets the intent), so a crash in between is reconciled by job folder."""
    registry, dialect = target.registry, target.dialect
    row = registry.add(JobRow(name=spec.name, run=spec.run, kind=spec.kind, fold=spec.fold,
                              attempt=spec.attempt, job_dir=spec.job_dir,
                              scheduler=dialect.name, state=JobState.PENDING.value),
                       [(d.job_id, d.kind, name) if name else (d.job_id, d.kind)
                        for d, name in deps])
    if row.scheduler_id:
        return row
    try:
        job_id = engine.submit(target.conn, dialect, render_job(cfg, dialect, spec),
                               spec.job_dir, [d for d, _ in deps])
    except SchedulerError:
        registry.forget(spec.name)
        raise
    registry.update(spec.name, scheduler_id=job_id, state=JobState.QUEUED.value,
                    submitted_at=time.time())
    what = what or (f"fold {spec.fold} attempt {spec.attempt}" if spec.kind == FOLD
                    else spec.kind)
    echo(f"submitted {what}: job {job_id} ({spec.name})")
    stored = registry.get(spec.name)
    assert stored is not None
    return stored


def record_experiment(registry: Registry, experiment: Experiment, host: str,
                      **options: object) -> ExperimentRow:
    """The experiment and its runs in the registry (the first record of each is kept)."""
    now = time.time()
    text = json.dumps(options, sort_keys=True)
    runs = [RunRow(id=r.id, dataset=r.dataset, trainer=r.trainer, plans=r.plans,
                   configuration=r.configuration, created_at=now, host=host, options=text)
            for r in experiment.runs]
    return registry.add_experiment(ExperimentRow(
        id=experiment.id, dataset=experiment.dataset, trainer=experiment.trainer,
        plans=experiment.plans, configurations=json.dumps(list(experiment.configurations)),
        folds=json.dumps(list(experiment.folds)), created_at=now, host=host, options=text),
        runs)


@dataclass(frozen=True)
class Waits:
    """What a job of the plan waits for: scheduler dependencies (with the needed job's name)
    and the job folders whose exit markers its guard checks."""

    deps: list[tuple[Dependency, str | None]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)


def _waits_on_last(row: JobRow | None, waits: Waits) -> None:
    """Wait for ``row`` to complete: a scheduler dependency while it has not ended (one that
    ended is not passed: Slurm refuses ids it forgot), its exit marker checked in any case."""
    if row is None:
        return
    waits.dirs.append(row.job_dir)
    if row.scheduler_id and not JobState(row.state).finished:
        waits.deps.append((Dependency(row.scheduler_id, "afterok"), row.name))


@dataclass
class Submission:
    """Applies a plan: walks its steps in topological order and submits each job once."""

    target: Target
    cfg: Config
    plan: Plan
    echo: Echo = print
    npz: bool = False
    """``--npz`` asked for (on anyway when several configurations train)."""
    submitted: list[JobRow] = field(default_factory=list)
    last: dict[str, JobRow] = field(default_factory=dict)
    """Node key → the last job submitted for it in this submission."""

    def waits(self, node: Node) -> Waits:
        """What ``node``'s first job waits for: each needed node's last job."""
        waits = Waits()
        for need in node.needs:
            step = self.plan.steps.get(need.node)
            row = self.last.get(need.node) or (step.last if step else None)
            _waits_on_last(row, waits)
        return waits

    def run(self) -> list[JobRow]:
        for step in self.plan.steps.values():
            if step.action == SUBMIT:
                self._submit(step)
        return self.submitted

    def _label(self, node: Node, attempt: int) -> str:
        several = self.plan.graph.several
        if node.kind == FOLD:
            return f"{node.label(several)} attempt {attempt}"
        return node.label(several)

    def _submit(self, step: Step) -> None:
        node, layout, cfg = step.node, self.target.remote, self.cfg
        experiment = self.plan.graph.experiment
        if step.replaces:
            engine.cancel_rows(self.target.registry, self.target.conn, self.target.dialect,
                               step.replaces, detail=f"replaced: {step.why}")
            for row in step.replaces:
                self.echo(f"cancelled {row.name} (job {row.scheduler_id}): {step.why}")
        waits = self.waits(node)
        if node.kind == PREP:
            spec = prep_spec(cfg, layout, node.run, experiment.configurations, node.owner,
                             step.attempt)
            self._one(node, spec, waits.deps)
        elif node.kind == FIND_BEST:
            spec = find_best_spec(cfg, layout, node.run, node.owner, experiment.configurations,
                                  experiment.folds, step.attempt, waits.dirs)
            self._one(node, spec, waits.deps)
        elif node.kind == FOLD and step.chain is not None:
            chain = step.chain
            deps = ([(Dependency(chain.after, CONTINUES), None)] if chain.after
                    else waits.deps)
            for attempt in range(chain.first, chain.first + chain.length):
                # a continuation unless it is the first attempt of a new chain
                continues = attempt > chain.first or chain.after is not None
                spec = fold_spec(cfg, layout, node.run, chain.fold, attempt,
                                 npz=experiment.npz or self.npz, continues=continues,
                                 resume=chain.resume, needs=() if continues else waits.dirs)
                row = self._one(node, spec, deps, self._label(node, attempt))
                deps = [(Dependency(row.scheduler_id or "", CONTINUES), row.name)]

    def _one(self, node: Node, spec: JobSpec, deps: Sequence[tuple[Dependency, str | None]],
             what: str | None = None) -> JobRow:
        row = submit_spec(self.target, self.cfg, spec, deps, self.echo,
                          what or self._label(node, spec.attempt))
        self.submitted.append(row)
        self.last[node.key] = row
        return row
