"""What each job asks the scheduler for: its own resources, not the one ``cfg.resources``.

A fold job asks for ``resources`` (the GPU job everyone knows), changed by the configuration's
``training.resources_per_configuration`` entry (2d needs less memory and time than 3d). The
preprocessing and find_best_configuration jobs are CPU jobs: no GPU, their own cpus, memory and
walltime (``resources.prep`` / ``resources.find_best``); they share the fold jobs' queue, mail
and extra directives unless they name their own. The result is a whole ``ResourcesSection``, so
every header template renders it as it renders a fold job's.
"""

from __future__ import annotations

from hpcnn.config import Config, CpuJobResources, ResourcesSection
from hpcnn.errors import ConfigError

CPU_JOBS = ("prep", "find_best")
"""Job kinds that request no GPU."""


def fold_resources(cfg: Config, configuration: str) -> ResourcesSection:
    """A fold job's resources: ``resources`` with the configuration's overrides."""
    base = cfg.resources
    override = cfg.training.resources_per_configuration.get(configuration)
    if override is None:
        return base
    given = {k: v for k, v in override.model_dump().items() if v is not None}
    try:
        return ResourcesSection.model_validate({**base.model_dump(), **given})
    except ValueError as exc:  # pragma: no cover - each part was validated on load
        raise ConfigError(f"training.resources_per_configuration.{configuration}: {exc}") from exc


def cpu_resources(cfg: Config, kind: str) -> ResourcesSection:
    """A CPU job's resources (``kind``: prep or find_best)."""
    base = cfg.resources
    own: CpuJobResources = getattr(base, kind)
    return base.model_copy(update={
        "queue": own.queue or base.queue,
        "walltime": own.walltime,
        "nodes": 1,
        "cpus": own.cpus,
        "gpus": 0,
        "mem": own.mem,
        "extra_directives": (base.extra_directives if own.extra_directives is None
                             else own.extra_directives),
    })


def gpu_hours(resources: ResourcesSection) -> float | None:
    """The most GPU-hours one job may use (its walltime × GPUs); None without a walltime."""
    if resources.walltime is None:
        return None
    return resources.walltime / 3600 * resources.gpus
