"""Fold jobs for tests that render without a workspace: the run of cluster.yaml's training
section for a dataset given as its resolved folder name."""

from __future__ import annotations

from hpcnn.config import Config
from hpcnn.jobs.model import JobSpec, Run, fold_spec
from hpcnn.workspace import RemoteLayout


def config_run(cfg: Config, dataset: str = "Dataset501_Liver") -> Run:
    t = cfg.training
    return Run(dataset, t.trainer, t.plans, t.configuration)


def fold_job(cfg: Config, fold: int, dataset: str = "Dataset501_Liver") -> JobSpec:
    return fold_spec(cfg, RemoteLayout(cfg.remote_dir), config_run(cfg, dataset), fold)


def record_run(session, run: Run, **options: object) -> None:
    """Records ``run`` as train-all-folds would (an experiment of its one configuration), for
    tests that make up a run's jobs by hand."""
    from hpcnn.jobs.experiment import Experiment
    from hpcnn.jobs.submit import record_experiment

    experiment = Experiment(run.dataset, run.trainer, run.plans, (run.configuration,),
                            (0, 1, 2, 3, 4))
    record_experiment(session.registry, experiment, session.host, **options)
