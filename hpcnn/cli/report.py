"""``hpcnn report``: training curves and validation Dice of all folds in one PNG (or HTML)."""

from __future__ import annotations

import click

from hpcnn.cli.common import AppContext, pass_app

_MODEL_HELP = ("Trained model folder: nnUNet_results/DatasetNNN_Name/Trainer__Plans__config "
               "[default: the synced results of --run].")


@click.command("report")
@click.option("--model", "model", type=click.Path(file_okay=False), help=_MODEL_HELP)
@click.option("--run", "run_id", help="Run to report [default: the most recent run].")
@click.option("--out", "-o", "out", type=click.Path(dir_okay=False),
              help="PNG to write [default: ./report-<Dataset>-<Trainer__Plans__config>.png].")
@click.option("--html", "with_html", is_flag=True,
              help="Also write a self-contained HTML page (the PNG embedded) beside the PNG.")
@pass_app
def report_command(app: AppContext, model: str | None, run_id: str | None, out: str | None,
                   with_html: bool) -> None:
    """Plot every fold's training curves side by side and tabulate validation Dice.

    Per fold (one column each): train and validation loss, pseudo-Dice per class and epoch
    time, from all of the fold's training logs (continued runs merged); below, the Dice per
    class from each fold's validation/summary.json and the mean over folds. Works on a synced
    model folder; needs matplotlib, not torch.
    """
    from pathlib import Path

    from hpcnn.services.report import NO_CURVES, write_report

    written = write_report(app.model_folder(model, run_id), Path(out) if out else None,
                           with_html=with_html)
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
