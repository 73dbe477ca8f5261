"""``hpcnn train-all-folds`` and ``hpcnn push``: push → render → submit, idempotent.

The service builds the experiment (dataset, trainer, plans, configurations, folds) from
cluster.yaml and the options, checks the data and versions, and hands the experiment's graph
to hpcnn.jobs: the plan (graph × registry: what is done, what waits, what to submit) and the
submission (topological order, intent recorded first, one reconciliation). It writes nothing
into the registry itself. A resubmission is a new chain after the old one (attempts 5-8 after
1-4): its first attempt resumes from the fold's checkpoint where there is one (``--c``), which
this service looks up on the cluster before submitting (``with_checkpoints``).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hpcnn.config import Config, ResourcesSection, margin_problem
from hpcnn.dataset.layout import SPLITS
from hpcnn.errors import ConfigError, DataError, HpcnnError, Locked
from hpcnn.fsutil import atomic_write_text
from hpcnn.jobs import engine, transfer
from hpcnn.jobs.experiment import Experiment
from hpcnn.jobs.folds import continuations
from hpcnn.jobs.graph import Graph, build_graph
from hpcnn.jobs.model import (
    FOLD,
    PREP,
    JobSpec,
    Run,
    find_best_spec,
    fold_spec,
    job_python,
    prep_spec,
)
from hpcnn.jobs.plan import Plan, Step, make_plan
from hpcnn.jobs.resources import gpu_hours
from hpcnn.jobs.script import render_job, render_setup
from hpcnn.jobs.submit import Submission, reconcile, record_experiment
from hpcnn.nnunet.commands import DEFAULT_PLANNER
from hpcnn.nnunet.launcher import RESUMABLE
from hpcnn.remote.base import join_argv
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.state import JobRow
from hpcnn.units import format_hms
from hpcnn.workspace import RESULTS

Echo = Callable[[str], None]

_VERSION_PROBE = ("import importlib.metadata as m\ntry:\n    print(m.version('nnunetv2'))\n"
                  "except Exception:\n    print('-')\n")


@dataclass
class TrainOptions:
    dataset: str | None = None
    folds: list[int] | None = None
    trainer: str | None = None
    plans: str | None = None
    configurations: list[str] | None = None
    """``--configuration`` (repeatable; ``all``); default training.configurations."""
    resources: dict[str, object] = field(default_factory=dict)
    """Per-run overrides of cluster.yaml's resources (walltime, gpus, cpus, mem, queue)."""
    npz: bool = False
    preprocess: str | None = None
    fresh: bool = False
    resubmit_failed: bool = False
    dry_run: bool = False


@dataclass
class TrainResult:
    experiment: Experiment
    plan: Plan | None = None
    submitted: list[JobRow] = field(default_factory=list)
    scripts: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    graph: list[str] = field(default_factory=list)
    """The dry run's table: job, depends on, resources; then the GPU-hours at most."""

    @property
    def run(self) -> Run:
        return self.experiment.runs[0]

    @property
    def kept(self) -> list[Step]:
        return self.plan.kept_folds if self.plan else []

    @property
    def blocked(self) -> list[Step]:
        return self.plan.blocked if self.plan else []


def effective_config(cfg: Config, resources: dict[str, object]) -> Config:
    """cluster.yaml with this run's resource overrides, validated like the file itself."""
    given = {k: v for k, v in resources.items() if v is not None}
    if not given:
        return cfg
    try:
        merged = ResourcesSection.model_validate({**cfg.resources.model_dump(), **given})
    except ValueError as exc:
        raise ConfigError(f"invalid resource override: {exc}") from exc
    problem = margin_problem(merged.walltime, "--walltime" if "walltime" in given
                             else "resources.walltime", cfg.training.walltime_margin)
    if problem:
        raise ConfigError(problem)
    return cfg.model_copy(update={"resources": merged})


def folds_with_checkpoint(session: Session, run: Run, folds: list[int]) -> set[int]:
    """The folds whose result folder holds a checkpoint that nnU-Net's ``--c`` resumes from
    (final, latest or best), in one remote command."""
    if not folds:
        return set()
    base = session.remote.path(RESULTS, run.results_folder)
    tests = []
    for fold in folds:
        names = " ".join(shlex.quote(f"{base}/fold_{fold}/{c}") for c in RESUMABLE)
        tests.append(f"for c in {names}; do [ -f \"$c\" ] && echo {fold} && break; done")
    res = session.conn.run_shell("; ".join([*tests, "true"]), check=False)
    return {int(w) for w in res.stdout.split() if w.isdigit() and int(w) in folds}


def with_checkpoints(session: Session, plan: Plan) -> Plan:
    """The plan, each new chain that may resume set to resume exactly when its fold has a
    checkpoint (one remote command per configuration with such chains)."""
    by_run: dict[Run, list[Step]] = {}
    for step in plan.to_submit:
        if step.chain is not None and step.chain.may_resume:
            by_run.setdefault(step.node.run, []).append(step)
    for run, steps in by_run.items():
        have = folds_with_checkpoint(session, run, [s.chain.fold for s in steps if s.chain])
        for step in steps:
            assert step.chain is not None
            plan.steps[step.node.key] = replace(
                step, chain=replace(step.chain, resume=step.chain.fold in have))
    return plan


def check_local_data(session: Session, run: Run, remote_prep: bool) -> dict | None:
    """The dataset is ready to train: preprocessed with a split of exactly its cases (or, for
    preprocessing on the cluster, imported). Returns the preprocessing provenance."""
    ws = session.workspace
    if remote_prep:
        if not (ws.raw / run.dataset / "dataset.json").is_file():
            raise DataError(f"{ws.raw / run.dataset}: no dataset.json to preprocess on the cluster",
                            hint="import the dataset first (`hpcnn dataset import`)")
        return None
    folder = ws.preprocessed / run.dataset
    plans = folder / f"{run.plans}.json"
    if not plans.is_file():
        raise DataError(
            f"{run.dataset} is not preprocessed here ({plans} is missing)",
            hint=f"run `hpcnn preprocess {run.dataset}`, or set training.preprocess: remote to "
                 "preprocess on the cluster")
    try:
        splits = json.loads((folder / SPLITS).read_text())
        in_split = {c for s in splits[:1] for part in ("train", "val") for c in s[part]}
    except (OSError, ValueError, KeyError, TypeError):
        in_split = None
    from hpcnn.dataset.preprocess import read_provenance  # numpy, through the checks

    provenance = read_provenance(folder) or {}
    cases = set(provenance.get("cases") or [])
    if in_split is None or (cases and in_split != cases):
        raise DataError(
            f"{folder / SPLITS} is missing or does not list exactly the dataset's cases: five "
            "fold jobs would each write their own split (nnU-Net issue 3064)",
            hint=f"run `hpcnn preprocess {run.dataset}` again (it writes the split)")
    return provenance


def remote_nnunet_version(session: Session) -> str | None:
    """nnunetv2's version where jobs run, after the environment setup (None: not importable)."""
    if session.is_local and not session.cfg.environment.setup:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("nnunetv2")
        except PackageNotFoundError:
            return None
    line = render_setup(session.cfg) + f"{job_python(session.cfg)} -c {shlex.quote(_VERSION_PROBE)}"
    res = session.conn.run_shell(line, check=False)
    words = res.stdout.split()
    return words[-1] if res.ok and words and words[-1] != "-" else None


def check_versions(session: Session, provenance: dict | None) -> str:
    """Refuse to train with an nnunetv2 other than the one that preprocessed the data: the
    preprocessed format changed between versions (blosc2 in 2.6). Returns the version where jobs
    run (a prediction job records it; ``provenance`` None checks only that there is one)."""
    found = remote_nnunet_version(session)
    where = "this machine" if session.is_local else session.host
    if found is None:
        raise HpcnnError(f"nnunetv2 is not importable where jobs run ({where}) after "
                         "environment.setup",
                         hint="install nnunetv2 there, or fix environment.setup in cluster.yaml "
                              "(`hpcnn doctor` checks it)")
    wanted = (provenance or {}).get("nnunetv2_version")
    if wanted and wanted != found:
        raise HpcnnError(
            f"the data were preprocessed with nnunetv2 {wanted}, but {where} has {found}",
            hint=f"use nnunetv2=={wanted} where jobs run, or preprocess again with {found} "
                 f"(`pip install nnunetv2=={found}` here, then `hpcnn preprocess --clean`)")
    return found


def push_run(session: Session, run: Run, *, raw: bool = False, echo: Echo = print) -> int:
    """``hpcnn push``: the job files and the dataset, incrementally; a no-op for the parts
    already where the jobs run."""
    items = transfer.push_items(session.workspace, session.remote, run.dataset, raw=raw)
    return transfer.push(session.conn, session.registry, session.remote, items, run=run.id,
                         echo=echo)


def anchor_remote_dir(session: Session) -> None:
    """Record cluster.yaml's remote_dir as the absolute path it names on the cluster (what
    doctor records): job scripts run in their job folder, where the launcher's and trainers'
    paths in the commands would not resolve if relative to the cluster home."""
    if session.is_local:
        return
    q = shlex.quote(session.cfg.remote_dir)
    res = session.conn.run_shell(f"mkdir -p {q} && cd {q} && pwd")
    absolute = res.stdout.strip().splitlines()[-1]
    if absolute != session.remote.root:
        session.registry.save_facts(session.host, remote_dir=absolute)


def _move_results_aside(session: Session, run: Run, folds: list[int], echo: Echo) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = session.remote.path(RESULTS, run.results_folder)
    parts = []
    for f in folds:
        old = shlex.quote(f"{base}/fold_{f}")
        aside = shlex.quote(f"{base}/fold_{f}.replaced-{stamp}")
        parts.append(f"if [ -e {old} ]; then mv {old} {aside} && echo fold_{f}; fi")
    res = session.conn.run_shell("; ".join([*parts, "true"]))
    for moved in res.stdout.split():
        echo(f"--fresh: kept the old {moved} as {moved}.replaced-{stamp} in {base}")


def check_remote_planner(cfg: Config, experiment: Experiment) -> None:
    """With preprocessing on the cluster, the plans identifier the folds train with cannot be
    read from what the planner wrote (it is written there, later): a planner other than the
    default writes its own (``nnUNetPlannerResEncM``: ``nnUNetResEncUNetMPlans``, a site's
    planner any name), so the user names it instead of hpcnn guessing it."""
    planner = cfg.preprocess.planner
    if planner and planner != DEFAULT_PLANNER and experiment.plans == "nnUNetPlans":
        raise ConfigError(
            f"preprocess.planner {planner} writes its own plans file on the cluster, and the "
            "folds would train with nnUNetPlans, which it does not write",
            hint="name the plans it writes: training.plans or --plans (nnUNetPlannerResEncM "
                 "writes nnUNetResEncUNetMPlans, L and XL likewise)")


def plans_digest(session: Session, experiment: Experiment) -> str | None:
    """The sha256 of the plans file this machine pushes for ``experiment`` (None: the cluster
    preprocesses, or it is not here)."""
    import hashlib

    path = session.workspace.preprocessed / experiment.dataset / f"{experiment.plans}.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def check_other_experiments(session: Session, experiment: Experiment, digest: str | None, *,
                            refresh: bool) -> None:
    """Refuses, before anything is pushed or submitted, an experiment whose plans differ from
    those of another experiment of the same dataset that still has jobs queued or running.

    Both would write ``nnUNet_results/DatasetNNN_Name``'s find-best answer
    (``inference_information.json``, one per dataset), and with the same plans identifier but
    other contents (planned again, e.g. with another --gpu-memory-target) the push would
    replace the plans file under the other experiment's running folds, whose continuations
    would then build another network than their checkpoints hold. ``refresh``: poll the other
    experiments' unfinished jobs first (one remote command), else trust the registry."""
    registry = session.registry
    others: dict[str, tuple[str, str | None]] = {}
    for row in registry.runs():
        if row.dataset != experiment.dataset or (row.experiment or row.id) == experiment.id:
            continue
        theirs = row.option_values.get("plans_sha256")
        if row.plans != experiment.plans or (digest and theirs and theirs != digest):
            others[row.id] = (row.experiment or row.id, row.plans)
    if not others:
        return
    rows = [j for run in others for j in registry.jobs(run)
            if not JobState(j.state).finished and j.scheduler_id]
    if rows and refresh:
        rows, *_ = engine.refresh(registry, session.conn, session.dialect, rows,
                                  grace=session.cfg.status.lost_grace)
    busy = sorted({(*others[j.run], j.run) for j in rows if not JobState(j.state).finished})
    if not busy:
        return
    name, plans, run = busy[0]
    if plans == experiment.plans:
        why = (f"{plans}.json was planned again since it was submitted: pushing it now would "
               "change the plans under its queued and running folds")
    else:
        why = (f"it trains with {plans} and this one with {experiment.plans}: both "
               f"experiments' find-best would write nnUNet_results/{experiment.dataset}/"
               "inference_information.json (one per dataset)")
    raise ConfigError(
        f"experiment {name} of {experiment.dataset} still has jobs queued or running, and {why}",
        hint=f"wait for it (`hpcnn status --run {run}`) or cancel its runs (`hpcnn cancel "
             f"--run {run}`), then train this experiment")


def train_all_folds(session: Session, opts: TrainOptions, echo: Echo = print) -> TrainResult:
    """Push, render and submit the experiment's jobs; see the module docstring."""
    from filelock import FileLock, Timeout

    cfg = effective_config(session.cfg, opts.resources)
    experiment = session.new_experiment(opts.dataset, trainer=opts.trainer, plans=opts.plans,
                                        configurations=opts.configurations, folds=opts.folds,
                                        connect=not opts.dry_run)
    remote_prep = (opts.preprocess or cfg.training.preprocess) == "remote"
    if remote_prep:
        check_remote_planner(cfg, experiment)
    digest = None if remote_prep else plans_digest(session, experiment)
    check_other_experiments(session, experiment, digest, refresh=not opts.dry_run)
    if cfg.resources.gpus > 1:
        echo(f"note: {cfg.resources.gpus} GPUs per job: nnU-Net trains with -num_gpus "
             f"{cfg.resources.gpus} (DDP); one GPU per fold is usually faster in total")
    provenance = check_local_data(session, experiment.runs[0], remote_prep)
    locks = [FileLock(str(session.workspace.state_dir / f"train-{run.id}.lock"))
             for run in sorted(experiment.runs, key=lambda r: r.id)]
    held = []
    try:
        for lock, run in zip(locks, sorted(experiment.runs, key=lambda r: r.id), strict=True):
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise Locked(f"another hpcnn is submitting run {run.id} right now",
                             hint="wait for it to finish, then run `hpcnn status`") from None
            held.append(lock)
        return _train(session, cfg, experiment, remote_prep, provenance, opts, echo, digest)
    finally:
        for lock in reversed(held):
            lock.release()


def experiment_graph(cfg: Config, experiment: Experiment, remote_prep: bool) -> Graph:
    return build_graph(cfg, experiment, remote_prep=remote_prep,
                       find_best=cfg.training.find_best)


def _train(session: Session, cfg: Config, experiment: Experiment, remote_prep: bool,
           provenance: dict | None, opts: TrainOptions, echo: Echo,
           digest: str | None) -> TrainResult:
    registry = session.registry
    graph = experiment_graph(cfg, experiment, remote_prep)
    rows = [r for owner in graph.owners for r in registry.jobs(owner)]
    if rows and not opts.dry_run:
        rows = reconcile(session, rows, echo)
    continuing = {name for owner in graph.owners for name in continuations(registry, owner)}
    plan = make_plan(graph, rows, opts, 1 + cfg.training.max_resubmits, continuing)
    result = TrainResult(experiment, plan)
    if not plan.to_submit:
        return result
    if opts.dry_run:
        return _dry_run(session, cfg, plan, remote_prep, opts.npz, result)
    check_versions(session, provenance)
    anchor_remote_dir(session)
    push_run(session, experiment.runs[0], raw=remote_prep, echo=echo)
    if opts.fresh:
        for run in experiment.runs:
            folds = [s.chain.fold for s in plan.to_submit
                     if s.node.run == run and s.chain is not None]
            if folds:
                _move_results_aside(session, run, folds, echo)
    plan = with_checkpoints(session, plan)
    record_experiment(registry, experiment, session.host, folds=list(experiment.folds),
                      npz=opts.npz or experiment.npz, preprocess=remote_prep,
                      plans_sha256=digest)
    result.submitted = Submission(session, cfg, plan, echo, npz=opts.npz).run()
    return result


def _dry_run(session: Session, cfg: Config, plan: Plan, remote_prep: bool, npz: bool,
             result: TrainResult) -> TrainResult:
    """Write the scripts under ``.hpcnn/dry-run/<experiment>/``, list the exact remote
    commands and the job graph (job, what it waits for, resources, the GPU-hours it asks for
    at most), touching nothing where the jobs run."""
    layout, dialect = session.remote, session.dialect
    experiment = plan.graph.experiment
    out = session.workspace.state_dir / "dry-run" / experiment.id
    for item in transfer.push_items(session.workspace, layout, experiment.dataset,
                                    raw=remote_prep):
        result.commands.append(f"push {item.local} → {item.remote}")
    names: dict[str, str] = {}  # node key → the name of the job a dependent waits for
    for key, step in plan.steps.items():
        if step.last is not None:
            names[key] = step.last.name
    specs: list[tuple[JobSpec, list[str]]] = []
    for step in plan.to_submit:
        node = step.node
        after = [f"afterok {names.get(n.node, n.node)}" for n in node.needs]
        if node.kind == PREP:
            spec = prep_spec(cfg, layout, node.run, experiment.configurations, node.owner,
                             step.attempt)
            specs.append((spec, after))
        elif node.kind == FOLD and step.chain is not None:
            chain = step.chain
            for attempt in range(chain.first, chain.first + chain.length):
                if attempt > chain.first:
                    waits = [f"afterany {specs[-1][0].name}"]
                elif chain.after:
                    waits = [f"afterany job {chain.after}"]
                else:
                    waits = after
                continues = attempt > chain.first or chain.after is not None
                dirs = ["<needed>"] if node.needs and not continues else ()
                spec = fold_spec(cfg, layout, node.run, chain.fold, attempt,
                                 npz=npz or experiment.npz, continues=continues,
                                 resume=chain.resume, needs=dirs)
                specs.append((spec, waits))
            names[node.key] = specs[-1][0].name
            continue
        else:
            spec = find_best_spec(cfg, layout, node.run, node.owner, experiment.configurations,
                                  experiment.folds, step.attempt, ["<needed>"])
            specs.append((spec, after))
        names[node.key] = spec.name
    hours, unbounded = 0.0, False
    for spec, waits in specs:
        text = render_job(cfg, dialect, spec)
        result.scripts[spec.name] = text
        atomic_write_text(Path(out) / f"{spec.name}.sh", text, mode=0o600)
        argv = dialect.submit_command("job.sh", dependencies=[])
        result.commands.append(f"cd {shlex.quote(spec.job_dir)} && {join_argv(argv)}"
                               + (f"   # depends on {', '.join(waits)}" if waits else ""))
        resources = spec.resources or cfg.resources
        most = gpu_hours(resources)
        if most is None and resources.gpus:
            unbounded = True
        hours += most or 0.0
        result.graph.append(_graph_line(spec, waits, resources))
    for step in plan.blocked:
        result.graph.append(f"{step.node.label(plan.graph.several)}: not submitted, "
                            f"{step.why}")
    result.graph.append(f"GPU-hours asked for at most: {hours:.1f}"
                        + (" (and jobs without a walltime: unbounded)" if unbounded else ""))
    return result


def _graph_line(spec: JobSpec, waits: list[str], resources: ResourcesSection) -> str:
    """``job  <-  what it waits for  [cpus, gpus, mem, walltime, queue]``."""
    parts = [f"{resources.cpus} cpu", f"{resources.gpus} gpu"]
    if resources.mem:
        parts.append(f"{resources.mem} MB")
    parts.append(format_hms(resources.walltime) if resources.walltime else "no walltime")
    if resources.queue:
        parts.append(f"queue {resources.queue}")
    return (f"{spec.name}  <-  {', '.join(waits) or '(nothing)'}  [{', '.join(parts)}]")
