"""``hpcnn push``, ``train-all-folds``, ``cancel``: putting a run's jobs on the queue."""

from __future__ import annotations

import click

from hpcnn.cli.common import AppContext, pass_app
from hpcnn.units import format_bytes

_FOLDS = click.option("--folds", "-f", "folds", type=int, multiple=True,
                      help="Fold(s) to act on (repeat; default: training.folds / all).")
_RUN = click.option("--run", "run_id", help="Run id or prefix (default: the most recent run).")


@click.command("push")
@click.option("--dataset", "-d", help="Dataset id or name (default: training.dataset).")
@click.option("--raw", is_flag=True, help="Push nnUNet_raw (to preprocess on the cluster).")
@pass_app
def push_cmd(app: AppContext, dataset: str | None, raw: bool) -> None:
    """Copy what the jobs need to where they run: the preprocessed dataset and hpcnn's job
    files (launcher, trainers). Incremental (rsync, or SFTP where rsync is missing); never
    copies nnUNet_results, never deletes anything on the cluster."""
    from hpcnn.services.train import push_run

    with app.session() as session:
        run = session.new_run(dataset)
        total = push_run(session, run, raw=raw, echo=click.echo)
    click.echo(f"pushed {run.dataset} ({format_bytes(total)} in all, only changes moved)")


@click.command("train-all-folds")
@click.option("--dataset", "-d", help="Dataset id or name (default: training.dataset).")
@_FOLDS
@click.option("--trainer", help="nnU-Net trainer class (default: training.trainer).")
@click.option("--plans", help="Plans identifier (default: training.plans).")
@click.option("--configuration", "-c", "configurations", multiple=True,
              help="nnU-Net configuration (repeat for several; 'all': every one the plans "
                   "define; default: training.configurations).")
@click.option("--walltime", help="Walltime per job, e.g. 5:00:00 or 5h.")
@click.option("--gpus", type=int, help="GPUs per job.")
@click.option("--cpus", type=int, help="CPU cores per job.")
@click.option("--mem", help="Memory per job, e.g. 64gb.")
@click.option("--queue", help="Queue/partition.")
@click.option("--npz", is_flag=True, help="Keep validation probabilities (nnU-Net --npz).")
@click.option("--preprocess", type=click.Choice(["local", "remote"]),
              help="Where the data were/are preprocessed (default: training.preprocess).")
@click.option("--fresh", is_flag=True,
              help="Retrain from scratch; the old remote fold folders are kept aside.")
@click.option("--resubmit-failed", is_flag=True,
              help="Resubmit only folds that failed, were lost or cancelled, or ran out of "
                   "attempts.")
@click.option("--dry-run", is_flag=True,
              help="Write and print the scripts and the remote commands; touch nothing remote.")
@pass_app
def train_cmd(app: AppContext, dataset: str | None, folds: tuple[int, ...], trainer: str | None,
              plans: str | None, configurations: tuple[str, ...], walltime: str | None,
              gpus: int | None, cpus: int | None, mem: str | None, queue: str | None, npz: bool,
              preprocess: str | None, fresh: bool, resubmit_failed: bool,
              dry_run: bool) -> None:
    """Push, render and submit every fold of a run, each with its walltime continuations.

    With several configurations (-c, repeated) it submits an experiment: every fold of each,
    the cascade's folds after all five 3d_lowres folds, then find_best_configuration as a
    CPU job; --dry-run prints the job graph and the GPU-hours it asks for at most.
    Running it again for the same run submits nothing new and shows where it stands. Exit
    codes: 0 submitted (or already there), 2 a config/data error, 3 cluster unreachable,
    12 another hpcnn is submitting the same run.
    """
    from hpcnn.services.train import TrainOptions, train_all_folds

    opts = TrainOptions(
        dataset=dataset, folds=list(folds) or None, trainer=trainer, plans=plans,
        configurations=list(configurations) or None, npz=npz, preprocess=preprocess, fresh=fresh,
        resubmit_failed=resubmit_failed, dry_run=dry_run,
        resources={"walltime": walltime, "gpus": gpus, "cpus": cpus, "mem": mem,
                   "queue": queue})
    with app.session() as session:
        result = train_all_folds(session, opts, echo=click.echo)
    several = len(result.experiment.configurations) > 1
    if dry_run:
        for name, text in result.scripts.items():
            click.echo(f"# ===== {name} =====")
            click.echo(text, nl=False)
        if result.graph:
            click.echo("# ===== the job graph: job  <-  waits for  [resources] =====")
            for line in result.graph:
                click.echo(line)
        click.echo("# ===== what would run (nothing was done) =====")
        for line in result.commands:
            click.echo(line)
        return
    for step in result.kept:
        view = step.view
        assert view is not None
        click.echo(f"{step.node.label(several)}: already {view.state} (attempt {view.attempt}, "
                   f"job {view.row.scheduler_id}) — nothing new submitted")
    for step in result.blocked:
        click.echo(f"{step.node.label(several)}: not submitted: {step.why}")
    if result.submitted:
        what = "experiment" if several else "run"
        click.echo(f"{what} {result.experiment.id}: {len(result.submitted)} job(s) submitted; "
                   "follow it with `hpcnn status --watch`")


@click.command("cancel")
@_RUN
@_FOLDS
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def cancel_cmd(app: AppContext, run_id: str | None, folds: tuple[int, ...], yes: bool) -> None:
    """Cancel a run's jobs, queued continuations included: every job of the run (its folds,
    and a `predict --on-cluster` job of it), or only the folds given with --folds."""
    from hpcnn.services.cancel import cancel_jobs, live_jobs

    with app.session() as session:
        if not session.runs():
            click.echo(f"nothing to cancel: no runs in {session.workspace.root}")
            return
        run, rows = live_jobs(session, run_id, list(folds) or None)
        if not rows:
            click.echo(f"nothing to cancel: run {run.id} has no queued or running jobs"
                       + (f" of fold(s) {', '.join(map(str, folds))}" if folds else ""))
            return
        what = (f"folds {', '.join(map(str, folds))}" if folds
                else "every job (folds and predictions)")
        if not yes:
            click.confirm(f"Cancel {what} of run {run.id} ({len(rows)} job(s))?", abort=True)
        cancel_jobs(session, rows)
    for row in rows:
        click.echo(f"cancelled {row.name} (job {row.scheduler_id})")


COMMANDS = [push_cmd, train_cmd, cancel_cmd]
