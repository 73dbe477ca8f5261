"""``hpcnn logs``: a fold's job output (its latest attempt that ran) or nnU-Net's training log,
read over the session's connection; ``since`` lets ``--follow`` print only what was appended."""

from __future__ import annotations

import shlex
from collections.abc import Callable

from hpcnn.errors import ConfigError
from hpcnn.jobs.folds import continuations, fold_views
from hpcnn.jobs.model import FOLD
from hpcnn.nnunet.training_log import LOG_GLOB
from hpcnn.services.session import Session
from hpcnn.workspace import RESULTS


def fold_log(session: Session, run_id: str | None, fold: int, *, err: bool = False,
             training: bool = False, tail: int | None = None, since: int | None = None,
             echo: Callable[[str], None] = print,
             note: Callable[[str], None] | None = None) -> int:
    """Print the log (from byte ``since``, or its last ``tail`` lines: 0 prints none); returns
    its size, the offset to follow from. ``note`` is told, on the first read, when the log is
    empty or not there yet (an empty ``err.log`` is the usual good case: say it, not nothing)."""
    run, _ = session.find_run(run_id)
    rows = [r for r in session.registry.jobs(run.id) if r.kind == FOLD and r.fold == fold]
    if not rows:
        folds = sorted({r.fold for r in session.registry.jobs(run.id) if r.fold is not None})
        raise ConfigError(f"run {run.id} has no fold {fold} (folds: {folds})")
    view = fold_views(rows, continuations(session.registry, run.id))[0]
    if training:
        folder = session.remote.path(RESULTS, run.results_folder, f"fold_{fold}")
        path = f'"$(ls -t {shlex.quote(folder)}/{LOG_GLOB} 2>/dev/null | head -n 1)"'
        what = f"fold {fold} has no nnU-Net training log yet ({folder})"
    else:
        name = f"{view.row.job_dir}/{'err' if err else 'out'}.log"
        path = shlex.quote(name)
        what = f"{name} (attempt {view.attempt}, {view.state})"
    if since is not None:
        show = f"tail -c +{since + 1} \"$p\""
    elif tail is not None:
        show = f"tail -n {max(0, int(tail))} \"$p\""
    else:
        show = 'cat "$p"'
    res = session.conn.run_shell(
        f'p={path}; [ -n "$p" ] && [ -e "$p" ] || {{ echo none; exit 0; }}; wc -c < "$p"; {show}',
        check=False)
    size_line, _, text = res.stdout.partition("\n")
    size = int(size_line) if size_line.strip().isdigit() else None
    if text:
        echo(text)
    if note is not None and since is None:
        if size is None:
            note(what if training else f"{what} is not there yet: the job has not started")
        elif size == 0:
            note(f"{what} is empty")
    return size if size is not None else (since or 0)
