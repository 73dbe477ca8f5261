"""Rendering a run's fold job scripts (``hpcnn render``; submission uses the same requests)."""

from __future__ import annotations

import os
from pathlib import Path

from hpcnn.cluster_facts import load_facts
from hpcnn.config import Config
from hpcnn.errors import ConfigError
from hpcnn.fsutil import atomic_write_text
from hpcnn.render import render_job
from hpcnn.runs import current_run, fold_request
from hpcnn.schedulers import Dialect, get_dialect


def dialect_for(cfg: Config, override: str | None = None) -> Dialect:
    """The configured dialect; ``auto`` means the one ``hpcnn doctor`` detected on the host."""
    name = override or cfg.cluster.scheduler
    if name == "auto":
        name = load_facts(cfg.workspace, cfg.cluster.host or "").get("dialect", "auto")
    if name == "auto":
        raise ConfigError(
            "cluster.scheduler is 'auto' and the scheduler has not been detected yet",
            hint="run `hpcnn doctor` once (it detects and records it), or pass --scheduler",
        )
    return get_dialect(name)


def render_fold_scripts(
    cfg: Config,
    *,
    scheduler: str | None = None,
    dataset: str | None = None,
    folds: list[int] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str] | list[Path]:
    """Scripts by job name; with ``out_dir`` they are written there (atomically) instead."""
    dialect = dialect_for(cfg, scheduler)
    run = current_run(cfg, dataset)
    scripts = {}
    for fold in folds or cfg.training.folds:
        request = fold_request(cfg, run, fold)
        scripts[request.job] = render_job(cfg, dialect, request)
    if out_dir is None:
        return scripts
    return [atomic_write_text(Path(out_dir) / f"{name}.sh", text, mode=0o755)
            for name, text in scripts.items()]
