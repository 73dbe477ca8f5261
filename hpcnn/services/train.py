"""``hpcnn train-all-folds`` and ``hpcnn push``: push → render → submit, idempotent.

The plan is pure: from the run's registry rows and the options it decides, fold by fold, whether
to submit a new chain (attempt 1 and its walltime continuations, each ``afterany`` the one
before), resubmit (``--resubmit-failed``), retrain from scratch (``--fresh``) or leave the fold
alone. A resubmission is a new chain after the old one (attempts 5-8 after 1-4): its first
attempt runs whatever the old chain's last attempt did, and resumes from the fold's checkpoint
where there is one (``--c``); a first attempt with nothing to resume gets no ``--c``. Applying
the plan records each job's intent before the scheduler call and its id after; a job whose
submission hpcnn did not live to record is found again from its job folder.
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
from hpcnn.errors import ConfigError, DataError, HpcnnError, Locked, SchedulerError
from hpcnn.fsutil import atomic_write_text
from hpcnn.jobs import engine, transfer
from hpcnn.jobs.folds import CONTINUES, FoldView, continuations, fold_views, newest_chain
from hpcnn.jobs.model import FOLD, JobSpec, Run, fold_spec, job_python, prep_spec
from hpcnn.jobs.script import render_job, render_setup
from hpcnn.nnunet.launcher import RESUMABLE
from hpcnn.remote.base import join_argv
from hpcnn.schedulers.base import Dependency, JobState
from hpcnn.services.session import Session
from hpcnn.state import JobRow
from hpcnn.workspace import RESULTS, RemoteLayout

Echo = Callable[[str], None]
FRESH = "fresh"
_RETRY = (JobState.FAILED, JobState.LOST, JobState.CANCELLED, JobState.TIMEOUT)

_VERSION_PROBE = ("import importlib.metadata as m\ntry:\n    print(m.version('nnunetv2'))\n"
                  "except Exception:\n    print('-')\n")


@dataclass
class TrainOptions:
    dataset: str | None = None
    folds: list[int] | None = None
    trainer: str | None = None
    plans: str | None = None
    configuration: str | None = None
    resources: dict[str, object] = field(default_factory=dict)
    """Per-run overrides of cluster.yaml's resources (walltime, gpus, cpus, mem, queue)."""
    npz: bool = False
    preprocess: str | None = None
    fresh: bool = False
    resubmit_failed: bool = False
    dry_run: bool = False


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


@dataclass
class TrainResult:
    run: Run
    submitted: list[JobRow] = field(default_factory=list)
    kept: list[FoldView] = field(default_factory=list)
    scripts: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


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


def plan(views: dict[int, FoldView], folds: list[int], opts: TrainOptions,
         chain_length: int) -> tuple[list[Chain], list[FoldView]]:
    """Which folds get a new chain, and which keep the jobs they have."""
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
        elif opts.resubmit_failed and view.state in _RETRY:
            # resume: as far as the plan knows (a dry run); the submission looks (with_checkpoints)
            chains.append(Chain(fold, view.attempts + 1, chain_length, f"was {view.state}",
                                resume=True))
        else:
            kept.append(view)
    return chains, kept


def unfinished_chains(rows: list[JobRow], continuing: set[str], kept: list[FoldView],
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


def with_checkpoints(session: Session, run: Run, chains: list[Chain]) -> list[Chain]:
    """The chains, each that may resume set to resume exactly when its fold has a checkpoint."""
    have = folds_with_checkpoint(session, run, [c.fold for c in chains if c.may_resume])
    return [replace(c, resume=c.fold in have) if c.may_resume else c for c in chains]


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


def _reconcile(session: Session, rows: list[JobRow], echo: Echo) -> list[JobRow]:
    """Jobs recorded as intent whose submission was never recorded: the scheduler may have
    accepted them before hpcnn stopped. Their job folder knows; the others are forgotten."""
    pending = [r for r in rows if r.scheduler_id is None]
    if not pending:
        return rows
    found = engine.recover_submitted(session.conn, session.dialect, [r.job_dir for r in pending])
    for row in pending:
        job_id = found.get(row.job_dir)
        if job_id:
            echo(f"recovered job {row.name}: the scheduler had accepted it as {job_id}")
            session.registry.update(row.name, scheduler_id=job_id, state=JobState.QUEUED.value,
                                    submitted_at=time.time())
        else:
            session.registry.forget(row.name)
    return session.registry.jobs(rows[0].run)


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


def submit_spec(session: Session, cfg: Config, spec: JobSpec, deps: list[Dependency],
                echo: Echo) -> JobRow:
    """Render and submit one job: its intent recorded before the scheduler call and its id
    after (a refusal forgets the intent), so a crash in between is reconciled by job folder."""
    registry, dialect = session.registry, session.dialect
    row = registry.add(JobRow(name=spec.name, run=spec.run, kind=spec.kind, fold=spec.fold,
                              attempt=spec.attempt, job_dir=spec.job_dir,
                              scheduler=dialect.name, state=JobState.PENDING.value),
                       [(d.job_id, d.kind) for d in deps])
    if row.scheduler_id:
        return row
    try:
        job_id = engine.submit(session.conn, dialect, render_job(cfg, dialect, spec),
                               spec.job_dir, deps)
    except SchedulerError:
        registry.forget(spec.name)
        raise
    registry.update(spec.name, scheduler_id=job_id, state=JobState.QUEUED.value,
                    submitted_at=time.time())
    what = f"fold {spec.fold} attempt {spec.attempt}" if spec.kind == FOLD else spec.kind
    echo(f"submitted {what}: job {job_id} ({spec.name})")
    stored = registry.get(spec.name)
    assert stored is not None
    return stored


def train_all_folds(session: Session, opts: TrainOptions, echo: Echo = print) -> TrainResult:
    """Push, render and submit the run's fold chains; see the module docstring."""
    from filelock import FileLock, Timeout

    cfg = effective_config(session.cfg, opts.resources)
    run = session.new_run(opts.dataset, trainer=opts.trainer, plans=opts.plans,
                          configuration=opts.configuration, connect=not opts.dry_run)
    remote_prep = (opts.preprocess or cfg.training.preprocess) == "remote"
    folds = opts.folds or cfg.training.folds
    if cfg.resources.gpus > 1:
        echo(f"note: {cfg.resources.gpus} GPUs per job: nnU-Net trains with -num_gpus "
             f"{cfg.resources.gpus} (DDP); one GPU per fold is usually faster in total")
    provenance = check_local_data(session, run, remote_prep)
    lock = FileLock(str(session.workspace.state_dir / f"train-{run.id}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Locked(f"another hpcnn is submitting run {run.id} right now",
                     hint="wait for it to finish, then run `hpcnn status`") from None
    try:
        return _train(session, cfg, run, folds, remote_prep, provenance, opts, echo)
    finally:
        lock.release()


def _train(session: Session, cfg: Config, run: Run, folds: list[int], remote_prep: bool,
           provenance: dict | None, opts: TrainOptions, echo: Echo) -> TrainResult:
    registry = session.registry
    rows = [r for r in registry.jobs(run.id) if r.kind == FOLD]
    if rows and not opts.dry_run:
        rows = [r for r in _reconcile(session, rows, echo) if r.kind == FOLD]
    continuing = continuations(registry, run.id)
    views = {v.fold: v for v in fold_views(rows, continuing)}
    chains, kept = plan(views, folds, opts, 1 + cfg.training.max_resubmits)
    chains += unfinished_chains(rows, continuing, kept, 1 + cfg.training.max_resubmits)
    result = TrainResult(run, kept=kept)
    if not chains:
        return result
    if opts.dry_run:
        return _dry_run(session, cfg, run, chains, remote_prep, result)
    check_versions(session, provenance)
    anchor_remote_dir(session)
    layout = session.remote
    push_run(session, run, raw=remote_prep, echo=echo)
    if opts.fresh:
        _move_results_aside(session, run, [c.fold for c in chains], echo)
    chains = with_checkpoints(session, run, chains)
    session.record_run(run, folds=folds, npz=opts.npz, preprocess=remote_prep)
    prep_dep: list[Dependency] = []
    if remote_prep:
        prep = submit_spec(session, cfg, prep_spec(cfg, layout, run), [], echo)
        result.submitted.append(prep)
        prep_dep = [Dependency(prep.scheduler_id or "", "afterok")]
    for chain in chains:
        deps = [Dependency(chain.after, CONTINUES)] if chain.after else prep_dep
        for attempt in range(chain.first, chain.first + chain.length):
            spec = _chain_spec(cfg, layout, run, chain, attempt, npz=opts.npz)
            row = submit_spec(session, cfg, spec, deps, echo)
            result.submitted.append(row)
            deps = [Dependency(row.scheduler_id or "", CONTINUES)]
    return result


def _chain_spec(cfg: Config, layout: RemoteLayout, run: Run, chain: Chain, attempt: int, *,
                npz: bool = False) -> JobSpec:
    """One attempt of ``chain``: a continuation unless it is the first of a new chain."""
    continues = attempt > chain.first or chain.after is not None
    return fold_spec(cfg, layout, run, chain.fold, attempt, npz=npz, continues=continues,
                     resume=chain.resume)


def _dry_run(session: Session, cfg: Config, run: Run, chains: list[Chain], remote_prep: bool,
             result: TrainResult) -> TrainResult:
    """Write the scripts under ``.hpcnn/dry-run/<run>/`` and list the exact remote commands,
    touching nothing where the jobs run."""
    layout, dialect = session.remote, session.dialect
    out = session.workspace.state_dir / "dry-run" / run.id
    for item in transfer.push_items(session.workspace, layout, run.dataset, raw=remote_prep):
        result.commands.append(f"push {item.local} → {item.remote}")
    specs: list[tuple[JobSpec, str]] = []
    if remote_prep:
        specs.append((prep_spec(cfg, layout, run), ""))
    for chain in chains:
        for attempt in range(chain.first, chain.first + chain.length):
            after = ("afterany:<id of attempt "
                     f"{attempt - 1}>" if attempt > chain.first else
                     ("afterok:<id of the preprocessing job>" if remote_prep else ""))
            specs.append((_chain_spec(cfg, layout, run, chain, attempt), after))
    for spec, after in specs:
        text = render_job(cfg, dialect, spec)
        result.scripts[spec.name] = text
        atomic_write_text(Path(out) / f"{spec.name}.sh", text, mode=0o600)
        argv = dialect.submit_command("job.sh", dependencies=[])
        result.commands.append(f"cd {shlex.quote(spec.job_dir)} && {join_argv(argv)}"
                               + (f"   # depends on {after}" if after else ""))
    return result

