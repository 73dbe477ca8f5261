"""The whole nnU-Net method on this machine: choose among trained configurations
(``hpcnn find-best``) once their folds are synced.

The dataset, trainer and plans come from the command line, else cluster.yaml's training
section; the configurations from ``-c``, else every one with a model folder of that trainer and
plans under ``nnUNet_results/DatasetNNN_Name``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from hpcnn.config import Config
from hpcnn.dataset.layout import chosen_dataset, match_dataset
from hpcnn.errors import DataError
from hpcnn.nnunet.choice import Choice, Trained, find_best, trained_configurations
from hpcnn.workspace import Workspace


def results_folder(workspace: Workspace, spec: str) -> Path:
    """``nnUNet_results/DatasetNNN_Name`` for an id, name or folder name."""
    root = workspace.results
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    found = match_dataset(spec, names)
    if found is None:
        raise DataError(f"no results of dataset {spec!r} in {root} (there: "
                        f"{', '.join(sorted(names)) or 'none'})",
                        hint="sync the trained folds first (`hpcnn sync`)")
    return root / found


def trained_models(cfg: Config, dataset: str | None = None,
                   configurations: Sequence[str] = (), *, trainer: str | None = None,
                   plans: str | None = None, folds: Sequence[int] | None = None) -> Trained:
    """What find-best compares, from the arguments and cluster.yaml's training section."""
    workspace = Workspace(cfg.workspace)
    results = results_folder(workspace, chosen_dataset(dataset, cfg.training.dataset))
    trainer = trainer or cfg.training.trainer
    plans = plans or cfg.training.plans
    chosen = list(configurations) or trained_configurations(results, trainer, plans)
    return Trained(results, trainer, plans, tuple(chosen),
                   tuple(folds if folds else cfg.training.folds))


def choose(cfg: Config, trained: Trained, *, ensembling: bool = True, workers: int = 1,
           out: TextIO | None = None) -> Choice:
    """nnUNetv2_find_best_configuration on ``trained`` with this workspace's folders."""
    import os

    workspace = Workspace(cfg.workspace)
    env = {**os.environ, **workspace.nnunet_env(), "PYTHONUNBUFFERED": "1"}
    return find_best(trained, workspace.preprocessed / trained.dataset, env, workers=workers,
                     ensembling=ensembling, out=out)
