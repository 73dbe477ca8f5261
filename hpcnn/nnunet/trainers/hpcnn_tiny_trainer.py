"""Small nnU-Net trainers that hpcnn ships: one for plumbing tests, one for the demo.

This file is copied next to the job files on a cluster and imported there by nnU-Net through the
``nnUNet_extTrainer`` directory, where hpcnn is not installed: it may import nnunetv2 and the
standard library only. nnU-Net imports every top-level module of that directory, so this folder
holds trainer modules and nothing else.

``HPCNN_TINY_EPOCHS`` overrides ``num_epochs`` of both trainers, so that walltime tests can ask for
a few more epochs without another class. Set it the same way for every attempt of a fold: a resumed
fold trains up to the ``num_epochs`` of the attempt that runs. ``HPCNN_TINY_EPOCH_SECONDS`` makes
every epoch last at least that long (it waits at the epoch's end), so that a walltime test knows
how many epochs one attempt can train at most, however fast the machine is that day.
"""

import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

EPOCHS_VARIABLE = "HPCNN_TINY_EPOCHS"
EPOCH_SECONDS_VARIABLE = "HPCNN_TINY_EPOCH_SECONDS"
DEFAULT_DEVICE = torch.device("cuda")  # nnUNetTrainer's own default


def _epochs(default: int) -> int:
    """The number of epochs: the environment's override when set, else ``default``."""
    value = os.environ.get(EPOCHS_VARIABLE, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{EPOCHS_VARIABLE}={value!r}: needs a whole number of epochs, at least 1")
    return int(value)


def _epoch_seconds() -> float:
    """The shortest duration of an epoch in seconds (0: as fast as it trains)."""
    value = os.environ.get(EPOCH_SECONDS_VARIABLE, "").strip() or "0"
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 3600:
        raise ValueError(f"{EPOCH_SECONDS_VARIABLE}={value!r}: needs seconds from 0 to 3600")
    return seconds


class _ShortTrainer(nnUNetTrainer):
    """nnU-Net's default trainer with a short schedule given by the class attributes."""

    EPOCHS = ITERATIONS = VALIDATION_ITERATIONS = 1

    # nnU-Net records __init__'s named arguments for checkpoints: the signature must be its own.
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = DEFAULT_DEVICE):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _epochs(self.EPOCHS)
        self.num_iterations_per_epoch = self.ITERATIONS
        self.num_val_iterations_per_epoch = self.VALIDATION_ITERATIONS
        self.save_every = 1  # nnU-Net's own checkpoint_latest.pth every epoch: they are short
        self.min_epoch_seconds = _epoch_seconds()
        self._epoch_began = time.monotonic()

    def on_epoch_start(self) -> None:
        self._epoch_began = time.monotonic()
        super().on_epoch_start()

    def on_epoch_end(self) -> None:
        # Before nnU-Net stamps the epoch's end: the wait counts in its logged epoch time.
        time.sleep(max(0.0, self._epoch_began + self.min_epoch_seconds - time.monotonic()))
        super().on_epoch_end()


# The class names break PEP 8 on purpose: nnU-Net finds a trainer by its exact name, and its own
# trainers start with a lower-case "nnUNet".
class hpcnnTinyTrainer(_ShortTrainer):
    """Trains in seconds on a CPU: enough to exercise every file a fold writes, not to learn."""

    EPOCHS, ITERATIONS, VALIDATION_ITERATIONS = 2, 3, 1


class hpcnnDemoTrainer(_ShortTrainer):
    """Learns the demo's synthetic shapes (nested spheres, 40^3) to a validation Dice above 0.95
    in five epochs of eight iterations, about a minute per fold on two CPU cores, so that
    ``hpcnn demo`` ends with predictions worth looking at."""

    EPOCHS, ITERATIONS, VALIDATION_ITERATIONS = 5, 8, 2
