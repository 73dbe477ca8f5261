"""An experiment: what nnU-Net's whole method trains for one dataset.

An experiment is a dataset, a trainer, a plans identifier, the configurations to train and the
folds of each. Each configuration is one ``Run`` (one ``Trainer__Plans__configuration`` folder,
what status, logs and sync show); the experiment groups them and owns the jobs that belong to
none of them alone (the preprocessing job, find_best_configuration). Its id is the run's id when
it trains one configuration, so a single-configuration experiment is exactly today's run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcnn.errors import ConfigError
from hpcnn.jobs.model import Run
from hpcnn.nnunet.commands import CASCADE, LOWRES

ALL = "all"
"""``--configuration all``: every configuration the plans define."""


@dataclass(frozen=True)
class Experiment:
    dataset: str  # DatasetNNN_Name, resolved
    trainer: str
    plans: str
    configurations: tuple[str, ...]
    folds: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.configurations:
            raise ConfigError("an experiment trains at least one configuration")
        if CASCADE in self.configurations and LOWRES not in self.configurations:
            raise ConfigError(f"{CASCADE} trains on what the {LOWRES} folds predict: "
                              f"train {LOWRES} in the same experiment",
                              hint=f"add `-c {LOWRES}` (hpcnn submits the cascade after it)")
        if CASCADE in self.configurations and set(self.folds) != set(range(5)):
            raise ConfigError(f"{CASCADE} trains on what all five {LOWRES} folds predicted of "
                              f"their validation cases: train folds 0-4, not "
                              f"{', '.join(map(str, self.folds))}",
                              hint="leave --folds out (training.folds: [0, 1, 2, 3, 4])")

    def run(self, configuration: str) -> Run:
        return Run(self.dataset, self.trainer, self.plans, configuration)

    @property
    def runs(self) -> tuple[Run, ...]:
        return tuple(self.run(c) for c in self.configurations)

    @property
    def id(self) -> str:
        """The run id for one configuration; ``<dataset>-<trainer>-<c1>+<c2>[-<plans>]``
        (configurations sorted) for several."""
        if len(self.configurations) == 1:
            return self.runs[0].id
        first = self.runs[0]
        parts = [f"{first.dataset_id:03d}", self.trainer, "+".join(sorted(self.configurations))]
        if self.plans != "nnUNetPlans":
            parts.append(self.plans)
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))

    @property
    def npz(self) -> bool:
        """nnU-Net's ``--npz`` (validation probabilities): what find_best_configuration
        ensembles, so on whenever more than one configuration trains."""
        return len(self.configurations) > 1


def ordered(configurations: Iterable[str]) -> tuple[str, ...]:
    """The configurations once each, 3d_lowres before the cascade that needs it (the graph
    does not depend on it; messages and dry runs read better)."""
    out: list[str] = []
    for name in configurations:
        if name not in out:
            out.append(name)
    if CASCADE in out and LOWRES in out and out.index(LOWRES) > out.index(CASCADE):
        out.remove(LOWRES)
        out.insert(out.index(CASCADE), LOWRES)
    return tuple(out)


def plans_configurations(plans_file: Path) -> list[str] | None:
    """The configurations a plans file defines, in its order; None when it is not there (the
    data are preprocessed on the cluster). A file that is there but unreadable is an error."""
    try:
        text = plans_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{plans_file}: cannot read: {exc.strerror}") from exc
    try:
        configurations = json.loads(text)["configurations"]
        if not isinstance(configurations, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{plans_file} is not an nnU-Net plans file (no 'configurations')",
                          hint="preprocess the dataset again (`hpcnn preprocess`)") from None
    return list(configurations)


def choose_configurations(asked: Sequence[str], defined: Sequence[str] | None,
                          plans_file: Path) -> tuple[str, ...]:
    """``asked`` (``all`` expanded) checked against what the plans define, before anything is
    submitted: 3d_lowres and the cascade exist only when nnU-Net's planner made them."""
    if ALL in asked:
        if defined is None:
            raise ConfigError(
                f"--configuration all needs the plans, and {plans_file} is not here",
                hint="preprocess here first (`hpcnn preprocess`), or name the configurations")
        return ordered(defined)
    if defined is not None:
        missing = [c for c in asked if c not in defined]
        if missing:
            lowres = (f"; nnU-Net makes {LOWRES} (and {CASCADE}) only when the 3d_fullres patch "
                      "covers much less than the median image"
                      if {LOWRES, CASCADE} & set(missing) else "")
            raise ConfigError(
                f"the plans {plans_file} define no {', '.join(missing)} (they define "
                f"{', '.join(defined)}){lowres}",
                hint=f"train {', '.join(defined)}, or preprocess again for the missing "
                     "configuration")
    return ordered(asked)
