"""``hpcnn export`` and ``hpcnn import-model``.

Zip checks run on a fake model (checkpoints that load, no network; well under a second each).
The round trip exports the tiny trained model (tests/models.py), installs it into an empty
``nnUNet_results`` and predicts with both copies: the results must be identical (two predictions
with --fast, about 30 s each on 2 cores).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from models import fake_model, tiny_model, unseen_cases  # noqa: F401  (tiny_model: fixture)

MODEL = "Dataset502_Fake/hpcnnTinyTrainer__nnUNetPlans__3d_fullres"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.fixture
def fake_zip(tmp_path: Path, workspace: Path, hpcnn) -> Path:
    """A valid export of a fake model with fold 0 finished, fold 1 unfinished."""
    model = fake_model(tmp_path / "source", finished=("0",), unfinished=("1",))
    (model / "fold_0" / "progress.png").write_bytes(b"png")
    code, out, err = hpcnn("export", "--model", model, tmp_path / "fake.zip")
    assert code == 0, out + err
    return tmp_path / "fake.zip"


def test_export_writes_nnunets_layout_with_the_finished_folds(fake_zip: Path, tmp_path: Path,
                                                              hpcnn) -> None:
    with zipfile.ZipFile(fake_zip) as zf:
        names = sorted(zf.namelist())
    assert names == [f"{MODEL}/dataset.json", f"{MODEL}/fold_0/checkpoint_final.pth",
                     f"{MODEL}/fold_0/progress.png", f"{MODEL}/plans.json"]
    code, _, err = hpcnn("export", "--model", tmp_path / "source" / MODEL, fake_zip)
    assert code == 2 and "already exists" in err and "--force" in err


def test_nnunets_own_installer_reads_the_export(fake_zip: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                nnunet_available: None) -> None:
    from nnunetv2.model_sharing import model_import

    monkeypatch.setattr(model_import, "nnUNet_results", str(tmp_path / "nnunet-results"))
    model_import.install_model_from_zip_file(str(fake_zip))
    assert (tmp_path / "nnunet-results" / MODEL / "fold_0" / "checkpoint_final.pth").is_file()


def test_import_installs_and_refuses_a_silent_overwrite(fake_zip: Path, workspace: Path,
                                                        hpcnn) -> None:
    code, out, err = hpcnn("import-model", fake_zip)
    assert code == 0, out + err
    installed = workspace / "nnUNet_results" / MODEL
    assert f"installed {installed} (fold(s) 0)" in out
    assert sorted(p.name for p in (workspace / "nnUNet_results").iterdir()) == \
        ["Dataset502_Fake"], "no work folder left behind"
    (installed / "mine.txt").write_text("kept")
    code, _, err = hpcnn("import-model", fake_zip)
    assert code == 2 and f"{installed} already exists" in err and "--force" in err
    assert (installed / "mine.txt").read_text() == "kept"
    code, out, err = hpcnn("import-model", fake_zip, "--force")
    assert code == 0, out + err
    assert not (installed / "mine.txt").exists() and (installed / "plans.json").is_file()


def _zip(path: Path, members: dict[str, bytes], *, link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _members(fake_zip: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(fake_zip) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _evil_checkpoint(path: Path, marker: Path) -> bytes:
    """A checkpoint whose unpickling would run a command (weights_only refuses it)."""
    import torch

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"network_weights": {}, "trainer_name": "x", "extra": Payload()}, path)
    return path.read_bytes()


def _corrupt(fake_zip: Path) -> bytes:
    data = bytearray(fake_zip.read_bytes())
    offset = data.index(b"PK\x03\x04", data.index(b"checkpoint_final.pth") - 40) + 200
    data[offset] ^= 0xFF  # inside the stored checkpoint: the CRC no longer matches
    return bytes(data)


def test_bad_zips_are_refused_before_anything_is_written(fake_zip: Path, tmp_path: Path,
                                                         workspace: Path, hpcnn) -> None:
    good = _members(fake_zip)
    checkpoint = f"{MODEL}/fold_0/checkpoint_final.pth"
    marker = tmp_path / "payload-ran"
    cases = {
        "not a zip": (tmp_path / "a.zip", b"PK\x03\x04 truncated", ["not a readable zip"]),
        "damaged data": (tmp_path / "b.zip", _corrupt(fake_zip),
                         [f"{checkpoint} is damaged", "checksum"]),
        "escaping path": (_zip(tmp_path / "c.zip", {**good, f"{MODEL}/../../../evil.txt": b"x"}),
                          None, ["evil.txt", "leaves the folder"]),
        "absolute path": (_zip(tmp_path / "d.zip", {**good, "/tmp/evil.txt": b"x"}), None,
                          ["'/tmp/evil.txt' has an absolute path"]),
        "link": (_zip(tmp_path / "e.zip", good, link=f"{MODEL}/fold_0/debug.json"), None,
                 ["debug.json", "a link or special file"]),
        "foreign zip": (_zip(tmp_path / "f.zip", {"notes.txt": b"x", "data/a.csv": b"1"}), None,
                        ["notes.txt", "not an nnU-Net model zip"]),
        "no finished fold": (_zip(tmp_path / "g.zip", {k: v for k, v in good.items()
                                                       if "checkpoint" not in k}), None,
                             [f"{MODEL} lacks fold_K/checkpoint_final.pth"]),
        "code in a checkpoint": (_zip(tmp_path / "h.zip", {
            **good, checkpoint: _evil_checkpoint(tmp_path / "evil.pth", marker)}), None,
            [f"{checkpoint} does not load", "needs code to load"]),
    }
    for what, (path, content, words) in cases.items():
        if content is not None:
            path.write_bytes(content)
        code, out, err = hpcnn("import-model", path)
        assert code == 2, f"{what}: {out}{err}"
        assert path.name in err and "fix:" in err, what
        for word in words:
            assert word in err, f"{what}: {word!r} not in {err!r}"
        assert snapshot(workspace / "nnUNet_results") == {}, what
        assert not (tmp_path / "evil.txt").exists() and not marker.exists(), what


def test_size_is_bounded(fake_zip: Path, tmp_path: Path) -> None:
    from hpcnn.errors import DataError
    from hpcnn.nnunet.model_zip import import_model

    with pytest.raises(DataError, match=r"more than the 0\.0 MiB a model zip may hold"):
        import_model(fake_zip, tmp_path / "results", max_bytes=1000)
    assert not (tmp_path / "results").exists()


def test_export_import_predict_gives_identical_results(tiny_model: Path,  # noqa: F811
                                                       tmp_path: Path, workspace: Path,
                                                       hpcnn, sitk_available: None) -> None:
    import SimpleITK as sitk

    unseen_cases(tmp_path / "in", ["scan one.nrrd", "scan.two.nrrd"])
    code, out, err = hpcnn("export", "--model", tiny_model, tmp_path / "tiny.zip")
    assert code == 0, out + err
    assert "fold(s) 0, 1" in out
    assert not (workspace / "nnUNet_results").exists()
    code, out, err = hpcnn("import-model", tmp_path / "tiny.zip")
    assert code == 0, out + err
    installed = workspace / "nnUNet_results" / tiny_model.parent.name / tiny_model.name
    for model, output in ((tiny_model, "original"), (installed, "imported")):
        code, out, err = hpcnn("predict", tmp_path / "in", tmp_path / output, "--model", model,
                               "--fast")
        assert code == 0, out + err
    for name in ("scan one.nrrd", "scan.two.nrrd"):
        original, imported = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / o / name)))
                              for o in ("original", "imported"))
        assert original.any() and np.array_equal(original, imported)
