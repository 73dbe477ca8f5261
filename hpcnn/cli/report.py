"""``hpcnn report``: training curves and validation Dice of all folds in one PNG (or HTML)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpcnn.cli.common import AppContext, pass_app

if TYPE_CHECKING:
    from pathlib import Path

_MODEL_HELP = ("Trained model folder: nnUNet_results/DatasetNNN_Name/Trainer__Plans__config "
               "[default: the synced results of --run].")


@click.command("report")
@click.option("--model", "model", type=click.Path(file_okay=False), help=_MODEL_HELP)
@click.option("--run", "run_id", help="Run to report [default: the most recent run].")
@click.option("--configuration", "-c", "configurations", multiple=True, metavar="NAME",
              help="Only this configuration of the experiment (repeat for several) [default: "
                   "every configuration of the experiment of --run, one PNG each].")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False),
              help="PNG to write [default: ./report-<Dataset>-<Trainer__Plans__config>.png; "
                   "one configuration only].")
@click.option("--html", "with_html", is_flag=True,
              help="Also write a self-contained HTML page (the PNG embedded) beside the PNG.")
@pass_app
def report_command(app: AppContext, model: str | None, run_id: str | None,
                   configurations: tuple[str, ...], out: str | None, with_html: bool) -> None:
    """Plot every fold's training curves side by side and tabulate validation Dice.

    Per fold (one column each): train and validation loss, pseudo-Dice per class and epoch
    time, from all of the fold's training logs (continued runs merged); below, the Dice per
    class from each fold's validation/summary.json and the mean over folds. Works on a synced
    model folder; needs matplotlib, not torch. For an experiment of several configurations,
    one report per configuration and, once find-best chose, the winner.
    """
    from pathlib import Path

    if model:
        if configurations:
            raise click.UsageError("--configuration picks runs of an experiment; --model is "
                                   "one model folder")
        _report(Path(model), Path(out) if out else None, with_html)
        return
    from hpcnn.errors import DataError
    from hpcnn.services.method import chosen

    with app.session() as session:
        session.find_run(run_id, for_model=True)
        runs = session.experiment_runs(run_id, list(configurations) or None)
        choice = chosen(session, runs)
        folders = [session.workspace.results / run.results_folder for run, _ in runs]
    if out and len(folders) > 1:
        raise click.UsageError(f"--out names one PNG, and {len(folders)} configurations are "
                               "reported: pick one with -c, or leave --out out")
    reported = 0
    for folder in folders:
        if len(folders) > 1:
            click.echo(f"== {folder.name}")
        try:
            _report(folder, Path(out) if out else None, with_html)
            reported += 1
        except DataError as exc:
            if len(folders) == 1:
                raise
            click.echo(f"note: {exc}", err=True)
    if not reported:
        raise DataError("no configuration of the experiment has results on this machine",
                        hint="sync the finished folds first (`hpcnn sync`)")
    if choice is not None:
        click.secho(choice.summary(), bold=True)


def _report(folder: Path, out: Path | None, with_html: bool) -> None:
    """One model folder's report, and its lines."""
    from hpcnn.services.report import NO_CURVES, write_report

    written = write_report(folder, out, with_html=with_html)
    _, rows = written.report.dice_table()
    if not written.report.has_curves:
        click.echo(f"note: {NO_CURVES}")
    for fold in written.report.folds:
        log, note = fold.log, fold.summary_problem
        last = log.last
        line = f"fold {fold.fold}: " + (f"{len(log.epochs)} epochs" if log.epochs
                                         else "no training log")
        if last and last.pseudo_dice:
            line += f", last pseudo-Dice {' / '.join(f'{v:.3f}' for v in last.pseudo_dice)}"
        line += f", {note}" if note else f", validation Dice {fold.mean_dice:.3f}"
        click.echo(line)
    if len(rows) > len(written.report.folds):
        click.echo(f"{rows[-1][0]}: validation Dice {rows[-1][-1]}")
    for path in written.paths:
        click.echo(f"wrote {path}")


COMMANDS = [report_command]
