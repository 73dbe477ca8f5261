"""The ``hpcnn`` command group. Command modules import only click at module level, so that
``hpcnn --help`` stays as fast as a bare Click program (bench/cold_start.py measures it)."""

from __future__ import annotations

import sys

import click

from hpcnn import __version__
from hpcnn.cli import (
    clean,
    dataset,
    demo,
    doctor,
    init,
    login,
    method,
    monitor,
    predict,
    render,
    report,
    train,
)
from hpcnn.cli.common import AppContext


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="HPCNN_CONFIG",
    help="cluster.yaml to use (default: $HPCNN_CONFIG, else ./cluster.yaml, else run locally).",
)
@click.version_option(__version__, prog_name="hpcnn")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Train nnU-Net v2 on a Slurm, PBS/Torque, PBS Pro or Grid Engine cluster.

    \b
    Try it first (no cluster needed, a few minutes):
      hpcnn demo
    \b
    Typical day:
      hpcnn init                       describe your cluster once
      hpcnn doctor --probe             check SSH, scheduler and nnU-Net
      hpcnn dataset import EXPORTS --name Liver
      hpcnn preprocess Liver
      hpcnn train-all-folds            push, then submit the five folds
      hpcnn status --watch             where every fold stands
      hpcnn sync                       pull the finished folds back
      hpcnn predict IMAGES OUT         the ensemble on new images
    With no cluster.yaml, jobs run on this machine (the local scheduler).
    """
    ctx.obj = AppContext(config_path)


for module in (init, doctor, render, dataset, train, monitor, clean, predict, report, demo, login,
               method):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Console entry point: user errors become a message and an exit code, not a traceback."""
    from hpcnn.cli.common import run_cli

    sys.exit(run_cli(cli))


if __name__ == "__main__":
    main()
