"""Scheduler dialects by name. Modules load lazily: a dialect is chosen once per command, and
the CLI's start-up only needs the names (``DIALECTS``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcnn.schedulers.base import Dialect

__all__ = ["DIALECTS", "Dependency", "Dialect", "JobState", "SchedulerJob", "get_dialect"]

DIALECTS = {
    "local": "hpcnn.schedulers.local:LocalDialect",
    "torque": "hpcnn.schedulers.torque:TorqueDialect",
    "pbspro": "hpcnn.schedulers.pbspro:PbsProDialect",
    "slurm": "hpcnn.schedulers.slurm:SlurmDialect",
}


def __getattr__(name: str) -> Any:
    """``Dependency``, ``Dialect``, ``JobState``, ``SchedulerJob`` from base, on first use."""
    if name in ("Dependency", "Dialect", "JobState", "SchedulerJob"):
        from hpcnn.schedulers import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_dialect(name: str) -> Dialect:
    """The dialect object for a scheduler name (``auto`` must be resolved by the caller first)."""
    from hpcnn.errors import ConfigError

    try:
        module_name, cls_name = DIALECTS[name].split(":")
    except KeyError:
        raise ConfigError(
            f"unknown scheduler {name!r}; hpcnn knows {', '.join(sorted(DIALECTS))}"
        ) from None
    return getattr(importlib.import_module(module_name), cls_name)()
