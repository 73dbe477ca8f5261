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
             echo: Callable[[str], None] = print) -> int:
    """Print the log (from byte ``since``, or its last ``tail`` lines); returns its size, the
    offset to follow from."""
    run, _ = session.find_run(run_id)
    rows = [r for r in session.registry.jobs(run.id) if r.kind == FOLD and r.fold == fold]
    if not rows:
        folds = sorted({r.fold for r in session.registry.jobs(run.id) if r.fold is not None})
        raise ConfigError(f"run {run.id} has no fold {fold} (folds: {folds})")
    view = fold_views(rows, continuations(session.registry, run.id))[0]
    if training:
        folder = session.remote.path(RESULTS, run.results_folder, f"fold_{fold}")
        path = f'"$(ls -t {shlex.quote(folder)}/{LOG_GLOB} 2>/dev/null | head -n 1)"'
    else:
        path = shlex.quote(f"{view.row.job_dir}/{'err' if err else 'out'}.log")
    if since is not None:
        show = f"tail -c +{since + 1} \"$p\""
    elif tail:
        show = f"tail -n {int(tail)} \"$p\""
    else:
        show = 'cat "$p"'
    res = session.conn.run_shell(
        f'p={path}; [ -n "$p" ] && [ -e "$p" ] || exit 0; wc -c < "$p"; {show}', check=False)
    size_line, _, text = res.stdout.partition("\n")
    if text:
        echo(text)
    return int(size_line) if size_line.strip().isdigit() else (since or 0)
