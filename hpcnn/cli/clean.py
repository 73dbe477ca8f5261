"""``hpcnn clean``: hpcnn's remote copies of a run's inputs (and of its prediction jobs' images),
removed after a confirmation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpcnn.cli.common import AppContext, pass_app

if TYPE_CHECKING:
    from hpcnn.services.clean import CleanPlan


def _size(nbytes: int | None) -> str:
    from hpcnn.units import format_bytes

    return "" if nbytes is None else format_bytes(nbytes)


def _show(plan: CleanPlan, *, asking: bool) -> None:
    """Each folder, what happens to it, its size and why; never-synced results are asked about
    on a terminal and kept under --yes."""
    click.echo(f"run {plan.run.id} on {plan.where}:")
    rows = [("remove", f.item.rel, f.nbytes, f.item.what) for f in plan.targets()]
    later = [*plan.unsynced, *([plan.job_folder] if plan.unsynced and plan.job_folder else [])]
    fate = "asked: lost if removed" if asking else "kept under --yes"
    for f in later:
        why = (f"{f.item.what}, never synced here: {fate}" if f.item.fold is not None
               else f"{f.item.what}; {fate}" if f.item.prediction is not None
               else f"{f.item.what}: go with the last fold's results")
        rows.append(("ask" if asking else "keep", f.item.rel, f.nbytes, why))
    rows += [("keep", k.rel, k.nbytes, k.why) for k in plan.kept]
    width = max((len(r[1]) for r in rows), default=0)
    for action, rel, size, why in rows:
        click.echo(f"  {action:<6} {rel:<{width}}  {_size(size):>8}  {why}")


def _unsynced(plan: CleanPlan) -> tuple[str, str]:
    """The never-synced folds and never-fetched predictions, said apart: each has its own way
    home (``hpcnn sync``, ``hpcnn predict --attach ID``)."""
    folds = ", ".join(str(f.item.fold) for f in plan.unsynced if f.item.fold is not None)
    predictions = ", ".join(f.item.prediction for f in plan.unsynced if f.item.prediction)
    return folds, predictions


@click.command("clean")
@click.option("--run", "run_id", help="Run id or prefix (default: the most recent run).")
@click.option("--include-results", is_flag=True,
              help="Also remove the run's fold results on the cluster; folds never synced here "
                   "and prediction results never fetched are kept unless you confirm their loss "
                   "too.")
@click.option("--yes", "-y", is_flag=True,
              help="Remove without asking (results never synced or fetched here are then kept).")
@click.option("--dry-run", is_flag=True, help="Only list what would go, with sizes.")
@pass_app
def clean_cmd(app: AppContext, run_id: str | None, include_results: bool, yes: bool,
              dry_run: bool) -> None:
    """Free the cluster of hpcnn's copies of a run's inputs.

    \b
    Removed, after showing what and how big (one listing, one removal):
      the dataset copy pushed for the run (nnUNet_preprocessed/ or nnUNet_raw/DatasetX
      under cluster.remote_dir); kept while another run of that dataset has jobs
      queued or running.
    \b
    With --include-results, also the run's fold folders in nnUNet_results (folds never
    synced here only if you confirm their loss) and, with the last fold, the run's job
    logs and markers. Never hpcnn's job files, nothing outside remote_dir, nothing while
    the run has training jobs queued or running (exit 10: cancel them or wait). Asks on a
    terminal; --yes does not ask. A later push copies the dataset again. With the local
    scheduler the jobs read the workspace itself: nothing to remove.
    \b
    Also the images that `predict --on-cluster` jobs of the run left on the cluster
    (.hpcnn/predict/ID) once their job ended: the results of one never fetched with
    `hpcnn predict --attach ID` are kept like never-synced folds. A prediction job still
    queued or running keeps its folder, and the fold results it reads.
    """
    import sys

    from hpcnn.errors import ConfigError
    from hpcnn.services.clean import apply_clean, plan_clean

    with app.session() as session:
        plan = plan_clean(session, run_id, include_results=include_results)
        if plan.local:
            click.echo(f"run {plan.run.id}: jobs run on this machine and read this workspace's "
                       "own nnUNet_* folders; there is no remote copy, nothing to remove")
            return
        _show(plan, asking=not yes)
        if dry_run:
            click.echo("dry run: nothing was removed")
            return
        if not plan.targets(unsynced=True):
            click.echo("nothing to remove")
            return
        if not yes and not sys.stdin.isatty():
            raise ConfigError("hpcnn clean asks before removing anything, and there is no "
                              "terminal to ask on",
                              hint="pass --yes to remove what is listed above, or --dry-run to "
                                   "only list it")
        unsynced = False
        folds, predictions = _unsynced(plan)
        if plan.unsynced and not yes:
            never = [*([f"of fold(s) {folds} were never synced here (`hpcnn sync`)"] if folds
                       else []),
                     *([f"of prediction(s) {predictions} were never fetched (`hpcnn predict "
                        "--attach ID`)"] if predictions else [])]
            unsynced = click.confirm(f"The results {' and '.join(never)}: remove them too and "
                                     "lose them?", default=False)
        targets = plan.targets(unsynced=unsynced)
        if targets and not yes:
            total = sum(t.nbytes for t in targets)
            click.confirm(f"Remove {len(targets)} folder(s), {_size(total)}, from {plan.where}?",
                          abort=True)
        removed = apply_clean(session, plan, unsynced=unsynced)
        for found in removed:
            click.echo(f"removed {found.path} ({_size(found.nbytes)})")
        if not removed:
            click.echo("nothing removed")
    if plan.unsynced and not unsynced:
        confirm = "or run clean --include-results on a terminal and confirm their loss"
        if folds:
            click.echo(f"kept the never-synced results of fold(s) {folds}: `hpcnn sync` them "
                       f"first, {confirm}")
        if predictions:
            click.echo(f"kept the never-fetched results of prediction(s) {predictions}: `hpcnn "
                       f"predict --attach ID` brings them back, {confirm}")


COMMANDS = [clean_cmd]
