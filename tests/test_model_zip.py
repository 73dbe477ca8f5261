"""``hpcnn export`` and ``hpcnn import-model``.

Zip checks run on a fake model (checkpoints that load, no network; well under a second each).
The round trip exports the tiny trained model (tests/models.py), installs it into an empty
``nnUNet_results`` and predicts with both copies: the results must be identical (two predictions
with --fast, about 30 s each on 2 cores). The export carries inference checkpoints (the ones the
launcher writes on the cluster, which sync brings), the original folder nnU-Net's full ones: the
same round trip proves that predictions from slim and full checkpoints are identical.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from models import fake_model, tiny_model, unseen_cases  # noqa: F401  (tiny_model: fixture)
from test_checkpoint import evil_checkpoint

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
    return evil_checkpoint(path, marker).read_bytes()


def _corrupt(fake_zip: Path) -> bytes:
    data = bytearray(fake_zip.read_bytes())
    offset = data.index(b"PK\x03\x04", data.index(b"checkpoint_final.pth") - 40) + 200
    data[offset] ^= 0xFF  # inside the stored checkpoint: the CRC no longer matches
    return bytes(data)


def _garble(fake_zip: Path, member: str) -> bytes:
    """The zip with the deflated data of ``member`` overwritten: zlib cannot inflate it."""
    data = bytearray(fake_zip.read_bytes())
    with zipfile.ZipFile(fake_zip) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member))
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o:info.header_offset + o + 2],
                                          "little") for o in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len
    data[start:start + info.compress_size] = b"\xff" * info.compress_size
    return bytes(data)


def _twice(fake_zip: Path, member: str) -> bytes:
    """The zip with a second member of the name ``member`` (other content)."""
    import shutil
    import warnings

    copy = fake_zip.with_name("twice-source.zip")
    shutil.copy(fake_zip, copy)
    with warnings.catch_warnings(), zipfile.ZipFile(copy, "a") as zf:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name: wanted here
        zf.writestr(member, b'{"configurations": {}}')
    data = copy.read_bytes()
    copy.unlink()
    return data


def test_files_a_model_does_not_use_are_left_out_and_named(fake_zip: Path, tmp_path: Path,
                                                           workspace: Path, hpcnn) -> None:
    extra = {f"{MODEL}/fold_0/trainer_patch.py": b"import os", f"{MODEL}/postprocessing.pkl": b"x",
             f"{MODEL}/fold_0/notes/readme.txt": b"hi"}
    path = _zip(tmp_path / "extra.zip", {**_members(fake_zip), **extra})
    code, out, err = hpcnn("import-model", path)
    assert code == 0, out + err
    assert "left out 3 file(s) a model does not use" in out
    for name in extra:
        assert name in out, name
    installed = workspace / "nnUNet_results" / MODEL
    assert sorted(snapshot(installed)) == ["dataset.json", "fold_0/checkpoint_final.pth",
                                          "fold_0/progress.png", "plans.json"]


def test_bad_zips_are_refused_before_anything_is_written(fake_zip: Path, tmp_path: Path,
                                                         workspace: Path, hpcnn) -> None:
    good = _members(fake_zip)
    checkpoint = f"{MODEL}/fold_0/checkpoint_final.pth"
    marker = tmp_path / "payload-ran"
    evil = _evil_checkpoint(tmp_path / "evil.pth", marker)
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
            [f"{checkpoint}: refused: loading it would call posix.system", "code, not weights"]),
        "code in a best checkpoint": (_zip(tmp_path / "i.zip", {
            **good, f"{MODEL}/fold_0/checkpoint_best.pth": evil}), None,
            [f"{MODEL}/fold_0/checkpoint_best.pth: refused", "posix.system"]),
        "code in an unfinished fold's latest checkpoint": (_zip(tmp_path / "j.zip", {
            **good, f"{MODEL}/fold_1/checkpoint_latest.pth": evil}), None,
            [f"{MODEL}/fold_1/checkpoint_latest.pth: refused", "posix.system"]),
        "a deflated member damaged": (tmp_path / "k.zip", _garble(fake_zip, "dataset.json"),
                                      [f"{MODEL}/dataset.json is damaged",
                                       "nothing was installed"]),
        "duplicate names": (tmp_path / "l.zip", _twice(fake_zip, f"{MODEL}/plans.json"),
                            [f"'{MODEL}/plans.json' appear more than once"]),
    }
    for what, (path, content, words) in cases.items():
        if content is not None:
            path.write_bytes(content)
        code, out, err = hpcnn("import-model", path)
        assert code == 2, f"{what}: {out}{err}"
        assert path.name in err and "fix:" in err and "Traceback" not in err, what
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


def _is_the_launchers_inference_checkpoint(model: Path, installed: Path, tmp_path: Path) -> None:
    """The export carried, as each fold's checkpoint_final.pth, what the launcher writes on the
    cluster (launcher.write_inference_checkpoint): nnU-Net's file without the optimizer state,
    under 0.55x its size, with the same weights."""
    import shutil

    import torch

    from hpcnn.nnunet.checkpoint import check_checkpoint
    from hpcnn.nnunet.launcher import INFERENCE, INFERENCE_KEYS, write_inference_checkpoint

    for fold in ("fold_0", "fold_1"):
        full, exported = model / fold / "checkpoint_final.pth", installed / fold / \
            "checkpoint_final.pth"
        assert "optimizer_state" in check_checkpoint(full)
        assert exported.stat().st_size <= 0.55 * full.stat().st_size
        copy = tmp_path / "launcher" / fold
        copy.mkdir(parents=True)
        shutil.copy2(full, copy / "checkpoint_final.pth")
        on_cluster = check_checkpoint(write_inference_checkpoint(copy))
        assert (copy / INFERENCE).is_file()
        mine = check_checkpoint(exported)
        assert sorted(mine) == sorted(on_cluster) == sorted(INFERENCE_KEYS)
        weights = mine["network_weights"]
        assert weights.keys() == on_cluster["network_weights"].keys()
        assert all(torch.equal(weights[k], on_cluster["network_weights"][k]) for k in weights)


def test_export_import_predict_gives_identical_results_from_slim_checkpoints(tiny_model: Path,  # noqa: F811
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
    _is_the_launchers_inference_checkpoint(tiny_model, installed, tmp_path)
    for model, output in ((tiny_model, "original"), (installed, "imported")):
        code, out, err = hpcnn("predict", tmp_path / "in", tmp_path / output, "--model", model,
                               "--fast")
        assert code == 0, out + err
    for name in ("scan one.nrrd", "scan.two.nrrd"):
        original, imported = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / o / name)))
                              for o in ("original", "imported"))
        assert original.any() and np.array_equal(original, imported)
