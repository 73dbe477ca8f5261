"""Runs and their jobs: names, folders and the commands a fold job runs.

A run is what nnU-Net keys results by: dataset + trainer + plans + configuration. Its id (e.g.
``501-nnUNetTrainer-3d_fullres``) names the job folders and job names, which is how hpcnn finds
its jobs again after a crash between ``qsub`` and the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcnn.config import Config
from hpcnn.dataset.layout import chosen_dataset, existing_datasets, parse_folder_name
from hpcnn.render import JobRequest
from hpcnn.workspace import RemoteLayout, Workspace


@dataclass(frozen=True)
class Run:
    dataset: str  # what nnU-Net's commands get: DatasetNNN_Name, or the id/name as configured
    trainer: str
    plans: str
    configuration: str

    @property
    def id(self) -> str:
        ref = parse_folder_name(self.dataset)
        label = f"{ref.id:03d}" if ref else self.dataset
        parts = [label, self.trainer, self.configuration]
        if self.plans != "nnUNetPlans":
            parts.append(self.plans)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


def current_run(cfg: Config, dataset: str | None = None) -> Run:
    """The run described by cluster.yaml's training section (dataset overridable)."""
    spec = chosen_dataset(dataset, cfg.training.dataset, how="pass --dataset")
    return Run(
        dataset=resolve_dataset_name(cfg, spec),
        trainer=cfg.training.trainer,
        plans=cfg.training.plans,
        configuration=cfg.training.configuration,
    )


def resolve_dataset_name(cfg: Config, spec: str) -> str:
    """``DatasetNNN_Name`` when the workspace has the dataset; otherwise ``spec`` unchanged."""
    ws = Workspace(cfg.workspace)
    for folder in existing_datasets(ws.raw, ws.preprocessed).values():
        ref = parse_folder_name(folder.name)
        if ref and spec.lower() in (folder.name.lower(), ref.name.lower(), str(ref.id),
                                    f"{ref.id:03d}"):
            return folder.name
    return spec


def job_name(run: Run, fold: int, attempt: int = 1) -> str:
    return f"hpcnn-{run.id}-f{fold}-a{attempt}"


def train_command(cfg: Config, run: Run, fold: int) -> list[str]:
    """nnU-Net's own training entry point; ``--c`` resumes from a checkpoint when there is one
    and starts fresh otherwise, so the same command serves first attempts and continuations."""
    return [
        "nnUNetv2_train", run.dataset, run.configuration, str(fold),
        "-tr", run.trainer, "-p", run.plans, "--c", "-device", cfg.training.device,
    ]


def fold_request(cfg: Config, run: Run, fold: int, attempt: int = 1) -> JobRequest:
    """The job that trains one fold, with the nnU-Net environment of where it runs."""
    layout = RemoteLayout(cfg.remote_dir)
    name = job_name(run, fold, attempt)
    env = {"nnUNet_compile": "t" if cfg.training.compile else "f"}
    workers = cfg.training.data_augmentation_workers or cfg.resources.cpus
    env["nnUNet_n_proc_DA"] = str(max(1, workers))
    return JobRequest(
        run=run.id,
        job=name,
        job_dir=layout.job_dir(run.id, name),
        commands=[train_command(cfg, run, fold)],
        env=env,
        path_env=layout.nnunet_env(),
    )
