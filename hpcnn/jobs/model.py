"""Runs and their jobs: identity, names, folders and what each job runs.

A run is what nnU-Net keys results by: dataset + trainer + plans + configuration. Its id (e.g.
``501-nnUNetTrainer-3d_fullres``) is built from the RESOLVED ``DatasetNNN_Name`` only, never from
how the user spelled the dataset or what the laptop holds, so job names, folders and registry
keys stay the same from any machine. Job names are how a crash between ``qsub`` and the
registry is reconciled.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hpcnn.config import Config, ResourcesSection
from hpcnn.dataset.layout import parse_folder_name
from hpcnn.errors import ConfigError
from hpcnn.jobs.engine import BLOCKED_EXIT
from hpcnn.jobs.folds import CONTINUE_GUARD
from hpcnn.jobs.resources import cpu_resources, fold_resources
from hpcnn.nnunet import commands
from hpcnn.nnunet.commands import CASCADE
from hpcnn.workspace import RemoteLayout

FOLD, PREP, PROBE, PREDICT, FIND_BEST = "fold", "prep", "probe", "predict", "find_best"
"""Job kinds."""

FULLRES = "3d_fullres"


@dataclass(frozen=True)
class Run:
    dataset: str  # DatasetNNN_Name, resolved (services.session.Session.run)
    trainer: str
    plans: str
    configuration: str

    def __post_init__(self) -> None:
        if parse_folder_name(self.dataset) is None:
            raise ConfigError(f"{self.dataset!r} is not a resolved DatasetNNN_Name")

    @property
    def dataset_id(self) -> int:
        ref = parse_folder_name(self.dataset)
        assert ref is not None  # checked in __post_init__
        return ref.id

    @property
    def id(self) -> str:
        parts = [f"{self.dataset_id:03d}", self.trainer, self.configuration]
        if self.plans != "nnUNetPlans":
            parts.append(self.plans)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))

    @property
    def results_folder(self) -> str:
        """The fold folders' parent, relative to nnUNet_results (nnU-Net's own naming)."""
        return posixpath.join(self.dataset, f"{self.trainer}__{self.plans}__{self.configuration}")


def job_name(run_id: str, fold: int | None, attempt: int = 1, kind: str = FOLD) -> str:
    """``hpcnn-<run>-f<fold>-a<attempt>``; ``hpcnn-<run>-prep`` for the preprocessing job
    (``-prep-a<attempt>`` when resubmitted);
    ``hpcnn-<experiment>-find_best-a<attempt>`` (run again after folds were retrained)."""
    if kind == FOLD:
        return f"hpcnn-{run_id}-f{fold}-a{attempt}"
    if kind == FIND_BEST or (kind == PREP and attempt > 1):  # prep again: --resubmit-failed
        return f"hpcnn-{run_id}-{kind}-a{attempt}"
    return f"hpcnn-{run_id}-{kind}"


@dataclass(frozen=True)
class JobSpec:
    """One job to render and submit: its run, name, folder and what it runs."""

    run: str
    name: str
    job_dir: str
    commands: Sequence[Sequence[str]]
    kind: str = FOLD
    fold: int | None = None
    attempt: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    path_env: Mapping[str, str] = field(default_factory=dict)
    """Variables holding paths where jobs run (``nnUNet_*``); relative ones are under $HOME."""
    resources: ResourcesSection | None = None
    """What this job asks the scheduler for (hpcnn.jobs.resources); None: ``cfg.resources``."""


def job_python(cfg: Config) -> str:
    """The Python a job runs: this interpreter for local jobs without an environment setup,
    else ``python3`` as the cluster's environment.setup provides it."""
    return sys.executable if cfg.cluster.is_local and not cfg.environment.setup else "python3"


def nnunet_env(cfg: Config, layout: RemoteLayout, cpus: int) -> dict[str, str]:
    """nnU-Net's tuning variables for a job with ``cpus`` cores: compile off unless asked, data
    augmentation workers from the allocation (nnU-Net would take the NODE's count), and the
    processes of nnU-Net's other pools from it too: without ``nnUNet_def_n_proc`` every
    validation spawns 8 fresh Pythons that each import torch (about 60 CPU-seconds per fold
    before any case is exported, and 8 more address spaces under Grid Engine's h_vmem)."""
    workers = cfg.training.data_augmentation_workers or cpus
    trainers = layout.trainers_dir
    user = cfg.environment.variables.get("nnUNet_extTrainer")
    return {
        "nnUNet_compile": "t" if cfg.training.compile else "f",
        "nnUNet_n_proc_DA": str(max(1, workers)),
        "nnUNet_def_n_proc": str(max(1, cpus)),
        "nnUNet_extTrainer": f"{user}:{trainers}" if user else trainers,
    }


_WITH_DEADLINE = 'exec "$@" ${HPCNN_DEADLINE:+--deadline "$HPCNN_DEADLINE"}'
"""Runs the launcher with the job's deadline (walltime - margin, set by the job body)."""


def fold_spec(cfg: Config, layout: RemoteLayout, run: Run, fold: int, attempt: int = 1, *,
              npz: bool = False, continues: bool | None = None, resume: bool = False,
              needs: Sequence[str] = ()) -> JobSpec:
    """The job that trains (or continues) one fold through hpcnn's launcher.

    A continuation (``continues``; default: attempt > 1) first checks that attempt - 1, the
    attempt before it in its chain, stopped for its walltime, and resumes the fold (``--c``).
    The first attempt of a chain resumes only with ``resume`` (the fold has a checkpoint): with
    ``--c`` and no checkpoint nnU-Net warns that it cannot continue. It checks nothing of the
    attempt before it (that ended a chain that was given up), but, when it depends on other
    jobs (``needs``: their job folders, e.g. the last attempts of the five 3d_lowres folds),
    that each of them completed."""
    continues = attempt > 1 if continues is None else continues
    name = job_name(run.id, fold, attempt)
    resources = fold_resources(cfg, run.configuration)
    gpus = resources.gpus
    # walltime_margin 0: no deadline of its own (the launcher keeps a reserve before one); the
    # scheduler's SIGTERM at the walltime stops the launcher at the end of its epoch.
    margin = cfg.training.walltime_margin
    deadline = ["bash", "-c", _WITH_DEADLINE, "hpcnn-launch"] if margin else []
    # The launcher takes nnUNetv2_train's arguments (--c: only to continue or resume).
    train = commands.train(run.dataset, run.configuration, fold, trainer=run.trainer,
                           plans=run.plans, device=cfg.training.device, npz=npz,
                           num_gpus=gpus)
    argv = [*deadline, job_python(cfg), layout.launcher, *train[1:]]
    if margin:
        # walltime_margin is the whole reserve before the walltime: the launcher's own default
        # reserve (60 s) on top of it left no time to validate under short walltimes, so every
        # continuation stopped before validation until max_resubmits was used up.
        argv += ["--safety", "0"]
    if continues or resume:
        argv.append("--c")
    lines = [argv]
    if continues:
        previous = layout.job_dir(run.id, job_name(run.id, fold, attempt - 1))
        lines.insert(0, ["bash", "-c", CONTINUE_GUARD, "hpcnn-guard", previous])
    elif needs:
        lines.insert(0, needs_guard(needs))
    return JobSpec(
        run=run.id, name=name, job_dir=layout.job_dir(run.id, name), commands=lines,
        kind=FOLD, fold=fold, attempt=attempt,
        env=nnunet_env(cfg, layout, resources.cpus), path_env=layout.nnunet_env(),
        resources=None if resources is cfg.resources else resources,
    )


NEEDS_GUARD = f"""\
for d in "$@"; do
    code=$(head -n 1 "$d/exit_code" 2>/dev/null)
    [ "$code" = 0 ] && continue
    echo "hpcnn: blocked: ${{d##*/}} did not complete (exit ${{code:-none}}): this job needs it" >&2
    exit {BLOCKED_EXIT}
done
"""
"""``bash -c GUARD _ JOB_DIR...``: passes only when every needed job's exit marker is 0.

Slurm, Torque/PBS and the local queue never start a job whose ``afterok`` dependency failed;
Grid Engine's ``-hold_jid`` starts it once the needed job ENDED, however it ended. This guard
makes the dependent stop at once as blocked there (exit ``BLOCKED_EXIT``, status names the job
it waited for), and costs nothing elsewhere."""


def needs_guard(job_dirs: Sequence[str]) -> list[str]:
    return ["bash", "-c", NEEDS_GUARD, "hpcnn-needs", *job_dirs]


def data_configurations(configurations: Sequence[str]) -> list[str]:
    """The configurations plan_and_preprocess writes data for: a cascade trains on
    3d_fullres's data (nnU-Net's plans make it inherit them)."""
    out: list[str] = []
    for name in configurations:
        name = FULLRES if name == CASCADE else name
        if name not in out:
            out.append(name)
    return out


def prep_spec(cfg: Config, layout: RemoteLayout, run: Run,
              configurations: Sequence[str] | None = None, owner: str | None = None,
              attempt: int = 1) -> JobSpec:
    """The CPU job that preprocesses the dataset on the cluster (for ``configurations``,
    default the run's) and writes its split, so that the fold jobs (which depend on it with
    afterok) never race on splits_final.json. ``owner``: the experiment id its job folder
    and registry rows go under (default the run's)."""
    owner = owner or run.id
    name = job_name(owner, None, attempt, kind=PREP)
    resources = cpu_resources(cfg, PREP)
    python = job_python(cfg)
    return JobSpec(
        run=owner, name=name, job_dir=layout.job_dir(owner, name), kind=PREP, attempt=attempt,
        commands=[
            commands.through_launcher(python, layout.launcher, commands.plan_and_preprocess(
                run.dataset_id, data_configurations(configurations or [run.configuration]),
                workers=resources.cpus, planner=cfg.preprocess.planner,
                gpu_memory_target=cfg.preprocess.gpu_memory_target)),
            commands.write_splits(python, layout.launcher, run.dataset),
        ],
        env=nnunet_env(cfg, layout, resources.cpus), path_env=layout.nnunet_env(),
        resources=resources,
    )


def find_best_spec(cfg: Config, layout: RemoteLayout, run: Run, owner: str,
                   configurations: Sequence[str], folds: Sequence[int], attempt: int,
                   needs: Sequence[str]) -> JobSpec:
    """The CPU job that runs find_best_configuration once every fold of every configuration
    completed (``needs``: the job folders of each chain's last attempt); ``run`` gives the
    dataset, trainer and plans."""
    name = job_name(owner, None, attempt, kind=FIND_BEST)
    resources = cpu_resources(cfg, FIND_BEST)
    return JobSpec(
        run=owner, name=name, job_dir=layout.job_dir(owner, name), kind=FIND_BEST,
        attempt=attempt,
        commands=[needs_guard(needs), commands.through_launcher(
            job_python(cfg), layout.launcher, commands.find_best_configuration(
                run.dataset, configurations, trainer=run.trainer, plans=run.plans, folds=folds,
                workers=resources.cpus))],
        env=nnunet_env(cfg, layout, resources.cpus), path_env=layout.nnunet_env(),
        resources=resources,
    )


def predict_spec(cfg: Config, layout: RemoteLayout, run: Run, prediction: str,
                 folds: Sequence[str], *, device: str, fast: bool,
                 checkpoint: str | None = None) -> JobSpec:
    """The job that predicts the staged images of ``prediction`` (its ``input`` folder, in
    nnU-Net's naming) into its ``output`` folder with the run's model and ``folds`` (each loading
    ``checkpoint``, nnU-Net's ``checkpoint_final.pth`` when None): the cluster's python and
    nnunetv2 after environment.setup, as the fold jobs train."""
    name = job_name(run.id, None, kind=f"{PREDICT}-{prediction}")
    folder = layout.predict_dir(prediction)
    processes = max(1, min(3, cfg.resources.cpus))  # as a local predict: -npp/-nps
    line = commands.predict(
        posixpath.join(folder, "input"), posixpath.join(folder, "output"), run.dataset,
        run.configuration, trainer=run.trainer, plans=run.plans, folds=folds, device=device,
        workers=processes, tta=not fast, checkpoint=checkpoint)
    argv = commands.through_launcher(job_python(cfg), layout.launcher, line)
    return JobSpec(
        run=run.id, name=name, job_dir=layout.job_dir(run.id, name), commands=[argv],
        kind=PREDICT, env=nnunet_env(cfg, layout, cfg.resources.cpus),
        path_env=layout.nnunet_env(),
    )
