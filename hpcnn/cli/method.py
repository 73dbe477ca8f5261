"""``hpcnn find-best``: nnU-Net's choice among the trained configurations, recorded."""

from __future__ import annotations

import click

from hpcnn.cli.common import AppContext, pass_app


@click.command("find-best")
@click.argument("dataset", required=False)
@click.option("--configuration", "-c", "configurations", metavar="NAME", multiple=True,
              help="Configuration to compare; repeatable [default: every trained one].")
@click.option("--trainer", help="[default: training.trainer]")
@click.option("--plans", help="[default: training.plans]")
@click.option("--folds", "folds", metavar="0,1,...",
              help="Folds to cross-validate [default: training.folds].")
@click.option("--no-ensembles", is_flag=True, help="Compare single configurations only.")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=2, show_default=True,
              help="nnU-Net processes for ensembling and postprocessing.")
@pass_app
def find_best_command(app: AppContext, dataset: str | None, configurations: tuple[str, ...],
                      trainer: str | None, plans: str | None, folds: str | None,
                      no_ensembles: bool, workers: int) -> None:
    """Choose what to predict with: nnUNetv2_find_best_configuration on the synced folds.

    Compares every configuration's cross-validation Dice (and, with more than one, each pair's
    ensemble; the folds need their validation .npz files), determines the postprocessing, and
    records the winner in nnUNet_results/DatasetNNN_Name/hpcnn_choice.json, which `hpcnn
    predict` then uses. nnU-Net's own output goes to .hpcnn/logs/find-best-DatasetNNN_Name.log.
    """
    from hpcnn.fsutil import private_log
    from hpcnn.services.method import choose, trained_models
    from hpcnn.workspace import Workspace

    fold_list = [int(f) for f in folds.split(",")] if folds else None
    trained = trained_models(app.config, dataset, configurations, trainer=trainer, plans=plans,
                             folds=fold_list)
    click.echo(f"{trained.dataset}: {trained.trainer}, {trained.plans}, configurations "
               f"{', '.join(trained.configurations) or 'none'}, folds "
               f"{' '.join(map(str, trained.folds))}")
    state = Workspace(app.config.workspace).state_dir
    with private_log(state, f"find-best-{trained.dataset}.log") as (log, out):
        click.echo(f"nnU-Net's output: {log}")
        choice = choose(app.config, trained, ensembling=not no_ensembles, workers=workers,
                        out=out)
    for name, result in choice.candidates.items():
        mark = "*" if name == choice.winner else " "
        per_class = ", ".join(f"{k} {v:.4f}" for k, v in result["dice_per_class"].items())
        click.echo(f"{mark} {name}: Dice {result['dice']:.4f} ({per_class})")
    click.secho(f"winner: {choice.describe()}", fg="green", bold=True)
    per_class = ", ".join(f"{k} {v:.4f}" for k, v in choice.dice_per_class_postprocessed.items())
    click.echo(f"postprocessing {'helps' if choice.postprocessing_helped else 'does not help'}: "
               f"Dice {choice.dice:.4f} -> {choice.dice_postprocessed:.4f} ({per_class})")
    click.echo(f"recorded in {trained.results / 'hpcnn_choice.json'}; `hpcnn predict` uses it")


COMMANDS = [find_best_command]
