"""Rendering a run's fold job scripts (``hpcnn render``; train-all-folds renders the same)."""

from __future__ import annotations

import os
from pathlib import Path

from hpcnn.fsutil import atomic_write_text
from hpcnn.jobs.model import fold_spec
from hpcnn.jobs.script import render_job
from hpcnn.services.session import Session


def render_fold_scripts(
    session: Session,
    *,
    dataset: str | None = None,
    folds: list[int] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str] | list[Path]:
    """Scripts by job name; with ``out_dir`` they are written there (atomically) instead."""
    cfg, dialect = session.cfg, session.dialect
    run = session.new_run(dataset, connect=False)  # a review needs no cluster in reach
    scripts = {}
    for fold in folds or cfg.training.folds:
        spec = fold_spec(cfg, session.remote, run, fold)
        scripts[spec.name] = render_job(cfg, dialect, spec)
    if out_dir is None:
        return scripts
    return [atomic_write_text(Path(out_dir) / f"{name}.sh", text, mode=0o700)
            for name, text in scripts.items()]
