"""Scheduler dialects by name. Modules load lazily: a dialect is chosen once per command."""

from __future__ import annotations

import importlib

from hpcnn.errors import ConfigError
from hpcnn.schedulers.base import Dependency, Dialect, JobState, SchedulerJob

__all__ = ["DIALECTS", "Dependency", "Dialect", "JobState", "SchedulerJob", "get_dialect"]

DIALECTS = {
    "local": "hpcnn.schedulers.local:LocalDialect",
    "torque": "hpcnn.schedulers.torque:TorqueDialect",
    "pbspro": "hpcnn.schedulers.pbspro:PbsProDialect",
    "slurm": "hpcnn.schedulers.slurm:SlurmDialect",
}


def get_dialect(name: str) -> Dialect:
    """The dialect object for a scheduler name (``auto`` must be resolved by the caller first)."""
    try:
        module_name, cls_name = DIALECTS[name].split(":")
    except KeyError:
        raise ConfigError(
            f"unknown scheduler {name!r}; hpcnn knows {', '.join(sorted(DIALECTS))}"
        ) from None
    return getattr(importlib.import_module(module_name), cls_name)()
