"""nnU-Net checkpoints on this machine: the one weights-only check every checkpoint passes before
hpcnn lets nnU-Net load it, and the slim inference checkpoint that sync and export move.

nnU-Net's loaders (the predictor, ``--c``) unpickle a checkpoint with
``torch.load(weights_only=False)``: a file from a colleague or a download would run its code on
this machine. So every path that hands a checkpoint to nnU-Net (``predict`` with ``--model`` or a
synced ``--run``, ``export``, ``import-model``) first loads it here with PyTorch's own
weights-only unpickler (tensors, plain containers, the numpy scalars nnU-Net's training log
keeps), and the refusal names the global the file tried to load and the file. The tensors are
memory-mapped (``mmap=True``), so the check parses the pickle and reads no weights: about 70 ms
for a 246 MB checkpoint, against 420 ms for nnU-Net's own load (bench/checkpoint_bytes.py).

The inference checkpoint holds what the predictor reads (launcher.INFERENCE_KEYS): about half of
nnU-Net's file, whose other half is the optimizer state. The launcher writes it on the cluster
once a fold is complete; for a model folder here (an older sync, a model trained on this
machine) ``slim`` makes it from the checked file.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpcnn.errors import DataError
from hpcnn.nnunet.launcher import INFERENCE_KEYS, inference_checkpoint, safe_numpy_globals
from hpcnn.nnunet.model_folder import CHECKPOINT, ModelFolder

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REQUIRED = ("network_weights", "trainer_name", "init_args")


def check_checkpoint(path: Path, shown: str | None = None, *,
                     hint: str = "use a checkpoint you trust, written by nnU-Net's training "
                                 "(or `hpcnn import-model` a zip from `hpcnn export`)"
                     ) -> dict[str, Any]:
    """Load ``path`` with tensors and plain data only and check it is an nnU-Net checkpoint;
    returns it (tensors memory-mapped where the file allows). DataError naming ``shown`` (default:
    the path) and, for a pickle that would run code, the global it tried to load."""
    import torch

    where = shown or str(path)
    try:
        with torch.serialization.safe_globals(safe_numpy_globals()):
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                # A legacy (non-zip) torch file, or not a torch file: read it whole.
                data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError, KeyError) as exc:
        text = str(exc)
        refused = _GLOBAL.search(text)
        if refused:
            raise DataError(f"{where}: refused: loading it would call {refused.group(1)}, "
                            "which is code, not weights (nnU-Net's loader would run it)",
                            hint=hint) from exc
        reason = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
        raise DataError(f"{where}: does not load as a checkpoint ({reason[:300]})",
                        hint=hint) from exc
    missing = [k for k in _REQUIRED if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{where}: not an nnU-Net checkpoint (no {', '.join(missing)})",
                        hint=hint)
    return data


def check_folds(model: ModelFolder, folds: Iterable[str]) -> None:
    """The check for each fold's final checkpoint that nnU-Net's predictor is about to load."""
    for fold in folds:
        check_checkpoint(model.fold_dirs[fold] / CHECKPOINT)


def is_slim(checkpoint: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint holds only what prediction reads."""
    return set(checkpoint) <= set(INFERENCE_KEYS)


def slim_bytes(path: Path, shown: str | None = None) -> bytes | None:
    """The inference checkpoint of the checked file ``path``; None when it is one already."""
    import torch

    checkpoint = check_checkpoint(path, shown)
    if is_slim(checkpoint):
        return None
    buffer = io.BytesIO()
    torch.save(inference_checkpoint(checkpoint), buffer)
    return buffer.getvalue()
