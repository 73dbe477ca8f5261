"""``hpcnn render``: the job scripts hpcnn would submit, for review on a laptop."""

from __future__ import annotations

import click

from hpcnn.cli.common import AppContext, SchedulerChoice, pass_app


@click.command("render")
@click.option("--scheduler", "-s", type=SchedulerChoice(),
              help="Dialect to render for (default: cluster.scheduler from cluster.yaml).")
@click.option("--dataset", "-d", help="Dataset id or name (default: training.dataset).")
@click.option("--folds", "--fold", "-f", "folds", type=int, multiple=True,
              help="Fold(s) to render (default: training.folds). Repeat for several.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Write one <job-name>.sh per job into this folder instead of printing.")
@pass_app
def render_cmd(app: AppContext, scheduler: str | None, dataset: str | None,
               folds: tuple[int, ...], out_dir: str | None) -> None:
    """Render the fold job scripts without submitting anything.

    Shows exactly what `qsub`/`sbatch` would get: the scheduler header (walltime, nodes,
    cpus, gpus, memory, queue, mail) and hpcnn's body (logs, markers, environment setup,
    the nnU-Net command).
    """
    from hpcnn.services.render_jobs import render_fold_scripts

    with app.session(scheduler=scheduler) as session:
        scripts = render_fold_scripts(session, dataset=dataset, folds=list(folds) or None,
                                      out_dir=out_dir)
    if out_dir:
        for path in scripts:
            click.echo(f"wrote {path}")
    else:
        for i, (name, text) in enumerate(scripts.items()):
            if i:
                click.echo()
            click.echo(f"# ===== {name} =====")
            click.echo(text, nl=False)


COMMANDS = [render_cmd]
