"""``hpcnn demo``: the whole pipeline on this machine on a synthetic dataset."""

from __future__ import annotations

import click


@click.command("demo")
@click.argument("directory", default="hpcnn-demo", type=click.Path(file_okay=False))
def demo_cmd(directory: str) -> None:
    """Run import → check → preprocess → train-all-folds → status → sync → predict →
    evaluate → report on a small synthetic dataset with the local scheduler (no cluster
    needed), and print the Dice of the held-back cases.

    DIRECTORY (default ./hpcnn-demo) must be new or an earlier demo's. A few minutes on two
    CPU cores; every step is the real command, shown as it runs.
    """
    from pathlib import Path

    from hpcnn.cli.common import run_cli
    from hpcnn.services.demo import run_demo

    group = click.get_current_context().find_root().command  # the hpcnn group itself
    assert isinstance(group, click.Group)
    run_demo(Path(directory), lambda args: run_cli(group, args), click.echo)


COMMANDS = [demo_cmd]
