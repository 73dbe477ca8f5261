"""Scheduler dialects by name: every dialect module of this package, plus those a site registers.

A dialect module here is any module that is not one of the shared ones below; its name is the
scheduler's name in cluster.yaml and it exports its class as ``DIALECT``. A site adds its own
scheduler without forking hpcnn through the entry point group ``hpcnn.dialects``
(``name = "package.module:Class"``). Modules load lazily: a command resolves one dialect, and the
names alone cost a folder listing.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcnn.schedulers.base import Dialect

__all__ = ["Dependency", "Dialect", "JobState", "SchedulerJob", "dialect_names", "get_dialect",
           "is_dialect"]

ENTRY_POINT_GROUP = "hpcnn.dialects"
_SHARED = frozenset({"base", "batch", "detect", "localq"})
"""Modules of this package that are not dialects."""


def __getattr__(name: str) -> Any:
    """``Dependency``, ``Dialect``, ``JobState``, ``SchedulerJob`` from base, on first use."""
    if name in ("Dependency", "Dialect", "JobState", "SchedulerJob"):
        from hpcnn.schedulers import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _builtin() -> dict[str, str]:
    """{name: "module:attribute"} for the dialects of this package."""
    return {
        info.name: f"{__name__}.{info.name}:DIALECT"
        for info in pkgutil.iter_modules(__path__)
        if info.name not in _SHARED and not info.name.startswith("_")
    }


@cache
def _registry() -> dict[str, str]:
    """``_builtin`` and the registered dialects (a registered name never replaces a built-in
    one). Reading entry points scans every installed distribution: tens of milliseconds in an
    environment with nnU-Net's dependencies, so a built-in name never asks for it."""
    found = dict(_builtin())
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _spec(name: str) -> str | None:
    return _builtin().get(name) or _registry().get(name)


def is_dialect(name: str) -> bool:
    """Whether hpcnn can use the scheduler ``name`` (built-in or registered)."""
    return _spec(name) is not None


def dialect_names() -> list[str]:
    """Every scheduler name hpcnn can use, sorted (``auto`` is not one: it resolves to one)."""
    return sorted(_registry())


def get_dialect(name: str) -> Dialect:
    """The dialect object for a scheduler name (``auto`` must be resolved by the caller first)."""
    from hpcnn.errors import ConfigError
    from hpcnn.schedulers.base import Dialect

    spec = _spec(name)
    if spec is None:
        raise ConfigError(
            f"unknown scheduler {name!r}; hpcnn knows {', '.join(dialect_names())}",
            hint="set cluster.scheduler in cluster.yaml to one of them, or auto",
        )
    module_name, attr = spec.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"scheduler {name!r} ({module_name}:{attr}) cannot be loaded: {exc}",
                          hint="reinstall the package that provides it") from exc
    if not (isinstance(cls, type) and issubclass(cls, Dialect)):
        raise ConfigError(f"scheduler {name!r}: {module_name}:{attr} is not a Dialect class")
    return cls()
