"""The one weights-only check before nnU-Net loads a checkpoint (hpcnn/nnunet/checkpoint.py), on
every path that hands one to nnU-Net here: ``predict --model`` (and so a synced ``--run``, the
same code), ``export``; ``import-model`` in test_model_zip.py. Crafted checkpoints whose
unpickling would create a marker file; no network is loaded (fake models, under a second each).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from models import fake_model
from test_predict import image


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """An nnU-Net-like checkpoint whose unpickling runs ``touch marker`` (os.system)."""
    import torch

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"network_weights": {"w": torch.zeros(2)}, "trainer_name": "hpcnnTinyTrainer",
                "init_args": {"configuration": "3d_fullres"}, "logging": Payload()}, path)
    return path


def foreign_global_checkpoint(path: Path, _marker: Path) -> Path:
    """A checkpoint holding a harmless object of a class weights-only loading does not allow."""
    import torch

    torch.save({"network_weights": {}, "trainer_name": "x", "init_args": {},
                "logging": datetime.date(2025, 1, 1)}, path)
    return path


CRAFTED = {"runs a command": (evil_checkpoint, "posix.system"),
           "an object of another class": (foreign_global_checkpoint, "datetime.date")}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_predict_refuses_a_checkpoint_that_would_run_code(kind: str, tmp_path: Path, workspace,
                                                          hpcnn, sitk_available: None) -> None:
    make, refused = CRAFTED[kind]
    model = fake_model(tmp_path / "results", finished=("0", "1"))
    marker = tmp_path / "payload-ran"
    bad = make(model / "fold_1" / "checkpoint_final.pth", marker)
    image(tmp_path / "in" / "a.nrrd")
    code, out, err = hpcnn("predict", tmp_path / "in", tmp_path / "out", "--model", model)
    assert code == 2, out + err
    assert f"{bad}: refused: loading it would call {refused}" in err, err
    assert "code, not weights" in err and "fix:" in err
    assert "pytorch.org" not in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, workspace,
                                                         hpcnn) -> None:
    model = fake_model(tmp_path / "results", finished=("0",))
    marker = tmp_path / "payload-ran"
    bad = evil_checkpoint(model / "fold_0" / "checkpoint_final.pth", marker)
    for flags in ((), ("--full-checkpoints",)):
        code, out, err = hpcnn("export", "--model", model, tmp_path / "m.zip", *flags)
        assert code == 2, out + err
        assert f"{bad}: refused: loading it would call posix.system" in err, err
        assert not marker.exists()
        assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".m.zip*"))


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    from hpcnn.errors import DataError
    from hpcnn.nnunet.checkpoint import check_checkpoint

    junk = tmp_path / "checkpoint_final.pth"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(DataError, match=f"{junk}: does not load as a checkpoint"):
        check_checkpoint(junk)
    import torch

    torch.save({"weights": torch.zeros(1)}, junk)
    with pytest.raises(DataError, match="not an nnU-Net checkpoint .no network_weights, "
                                        "trainer_name, init_args"):
        check_checkpoint(junk, "shown name")
