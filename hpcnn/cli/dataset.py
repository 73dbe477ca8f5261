"""``hpcnn dataset import|check`` and ``hpcnn preprocess``."""

from __future__ import annotations

import click


@click.group("dataset")
def dataset_group() -> None:
    """Turn Slicer/NRRD/NIfTI exports into a valid nnU-Net dataset, and check one."""


COMMANDS = [dataset_group]
