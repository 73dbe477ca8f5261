"""The whole nnU-Net method on this machine: choose among trained configurations
(``hpcnn find-best``) once their folds are synced.

The dataset, trainer and plans come from the command line, else cluster.yaml's training
section; the configurations from ``-c``, else every one with a model folder of that trainer and
plans under ``nnUNet_results/DatasetNNN_Name``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from hpcnn.config import Config
from hpcnn.dataset.layout import chosen_dataset, match_dataset
from hpcnn.errors import DataError
from hpcnn.nnunet.choice import Choice, Trained, find_best, trained_configurations
from hpcnn.workspace import Workspace

if TYPE_CHECKING:
    from hpcnn.jobs.model import Run
    from hpcnn.services.session import Session
    from hpcnn.state import RunRow


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


def experiment_of(session: Session,
                  runs: Sequence[tuple[Run, RunRow]]) -> tuple[list[str], list[int]]:
    """The configurations and folds of the experiment ``runs`` belong to (all of them, however
    ``-c`` narrowed ``runs``)."""
    row = runs[0][1]
    experiment = session.registry.experiment(row.experiment) if row.experiment else None
    if experiment is not None:
        return experiment.configuration_list, experiment.fold_list
    return [r.configuration for r, _ in runs], list(session.cfg.training.folds)


def chosen(session: Session, runs: Sequence[tuple[Run, RunRow]]) -> Choice | None:
    """What find-best chose for the experiment of ``runs`` (among its every configuration,
    however ``-c`` narrowed what a command shows), from the results on this machine; None
    before it chose. ``status`` and ``report`` print it."""
    from hpcnn.nnunet.choice import experiment_choice

    if not runs:
        return None
    run = runs[0][0]
    configurations, folds = experiment_of(session, runs)
    return experiment_choice(session.workspace.results / run.dataset, run.trainer, run.plans,
                             configurations, folds)
