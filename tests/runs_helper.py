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
