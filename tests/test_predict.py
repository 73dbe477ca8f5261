"""``hpcnn predict`` and ``hpcnn evaluate``.

The input checks run against a fake model folder (no network is loaded, each test well under a
second). The end-to-end tests use the tiny model trained once per session (tests/models.py,
about 1.5 min on 2 cores) and run nnU-Net's predictor for real: one fold with Slicer output and
a version warning, two folds on mixed formats (no test-time augmentation) followed by
``evaluate`` (about 30 s each on an idle 2-core machine).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from models import fake_model, tiny_model, unseen_cases  # noqa: F401  (tiny_model: fixture)
from synthetic import Grid, Segment, ct_image, sphere, write_image, write_slicer_seg

from hpcnn.dataset import slicer
from hpcnn.nnunet import inputs, model_folder
from hpcnn.nnunet import predict as predict_service

CLASSES = {"liver": 1, "tumor": 2}
PRIORITY = ("tumor", "liver")  # the tumour sphere lies inside the liver sphere


def image(path: Path, size: tuple[int, ...] = (16, 16, 8)) -> Path:
    grid = Grid(size)  # type: ignore[arg-type]
    mask = sphere(grid, [s / 2 for s in size], 3)
    return write_image(path, ct_image(grid, {"liver": mask}, np.random.default_rng(0)), grid)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---- inputs: names, channels, skipped files (no network)


def test_every_image_is_a_case_named_after_its_file(tmp_path: Path,
                                                    sitk_available: None) -> None:
    src = tmp_path / "in"
    image(src / "Patient A (1).nrrd")
    image(src / "sub" / "x-ray.scan.v2.nii.gz")
    image(src / "Patient A (1)_label.nrrd")
    write_slicer_seg(src / "Patient A (1).seg.nrrd", [], Grid((16, 16, 8)))
    (src / "notes.txt").write_text("x")
    (src / ".hidden.nrrd").write_bytes(b"not read")
    cases, findings = inputs.collect([str(src)], ["CT"])
    assert [c.name for c in cases] == ["Patient A (1)", "sub/x-ray.scan.v2"]
    notes = " ".join(f.message for f in findings)
    assert "skipped 2 segmentation(s)" in notes and "Patient A (1).seg.nrrd" in notes
    assert "notes.txt" in notes and ".hidden" not in notes
    out = tmp_path / "out"
    assert inputs.check_outputs(cases, None, out) == [out / "Patient A (1).nrrd",
                                                      out / "sub/x-ray.scan.v2.nii.gz"]
    assert inputs.check_outputs(cases, ".seg.nrrd", out)[1] == out / "sub/x-ray.scan.v2.seg.nrrd"
    files, _ = inputs.collect([str(src / "sub" / "*.nii.gz"), str(src / "Patient A (1).nrrd")],
                              ["CT"])
    assert [c.name for c in files] == ["x-ray.scan.v2", "Patient A (1)"], "globs and files"


def test_channels_follow_the_models_order(tmp_path: Path, sitk_available: None) -> None:
    image(tmp_path / "named" / "case7_t2.nrrd")
    image(tmp_path / "named" / "case7_T1.nrrd")
    cases, _ = inputs.collect([str(tmp_path / "named")], ["T1", "T2"])
    assert [(c.name, [f.display for f in c.images]) for c in cases] == \
        [("case7", ["case7_T1.nrrd", "case7_t2.nrrd"])]
    image(tmp_path / "nnunet" / "b_0001.nii.gz")
    image(tmp_path / "nnunet" / "b_0000.nii.gz")
    cases, _ = inputs.collect([str(tmp_path / "nnunet")], ["T1", "T2"])
    assert [(c.name, [f.display for f in c.images]) for c in cases] == \
        [("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    cases, _ = inputs.collect([str(tmp_path / "nnunet" / "b_0000.nii.gz")], ["CT"])
    assert [c.output(None) for c in cases] == ["b.nii.gz"], "nnU-Net's naming: the case name"


# ---- bad input: a clear error naming the file and the fix, nothing written


def _vector(path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 16, 16, 3), np.uint8), isVector=True),
                    str(path))


def _flat(path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(path))


def _huge(path: Path) -> None:
    """A 60 kB file whose header declares 60000^3 voxels (200 TiB)."""
    path.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 60000 60000 60000\n"
                     b"encoding: raw\n\n" + bytes(60000))


def _cut(path: Path) -> None:
    image(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _nonfinite(path: Path) -> None:
    image(path)
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    values[1, 2, 3] = np.nan
    values[2, 3, 4] = np.inf
    write_image(path, values, Grid((16, 16, 8)))


BAD_INPUTS = {
    # name: (model channels, files to write, extra args, words the error must hold)
    "wrong number of channels": (("T1", "T2"), {"scan.nrrd": image}, (),
                                 ["scan.nrrd", "2 channel(s) (T1, T2)", "CASE_T1.nrrd"]),
    "a channel missing": (("T1", "T2"), {"c7_T1.nrrd": image}, (),
                          ["c7_T1.nrrd", "no T2 image"]),
    "several values per voxel": (("CT",), {"rgb.nrrd": _vector}, (),
                                 ["rgb.nrrd", "3 values per voxel", "1 channel(s) (CT)"]),
    "other dimensionality": (("CT",), {"slice.nrrd": _flat}, (),
                             ["slice.nrrd", "2-D image", "3-D volume"]),
    "unreadable file": (("CT",), {"ok.nrrd": image,
                                  "broken.nrrd": lambda p: p.write_bytes(b"NRRD0004\ngarbage")},
                        (), ["broken.nrrd", "cannot be read", "export it again"]),
    "names collide after conversion": (("CT",), {"a.nrrd": image, "a.nii.gz": image},
                                       ("--format", "nii.gz"),
                                       ["error: a.nii.gz, a.nrrd would all be written to a.nii.gz",
                                        "rename one"]),
    # what `dataset import` refuses, refused the same way before any worker starts (issue 19)
    "truncated gzip payload": (("CT",), {"ok.nrrd": image, "cut.nii.gz": _cut}, (),
                               ["cut.nii.gz: cannot read: cut short", "export or copy it again"]),
    "impossible size": (("CT",), {"huge.nrrd": _huge}, (),
                        ["huge.nrrd: declares 60000x60000x60000 uchar voxels",
                         "predicting may use here", "--max-gib 201167"]),
    "NaN and Inf voxels": (("CT",), {"nan.nrrd": _nonfinite}, (),
                           ["nan.nrrd: 1 voxel(s) are NaN", "nan.nrrd: 1 voxel(s) are infinite",
                            "background value"]),
    "NaN in a NIfTI (SimpleITK reads 0)": (("CT",), {"nan.nii.gz": _nonfinite}, (),
                                           ["nan.nii.gz: 1 voxel(s) are NaN"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_anything_is_written(case: str, tmp_path: Path, workspace,
                                                         hpcnn, sitk_available: None) -> None:
    channels, files, args, words = BAD_INPUTS[case]
    model = fake_model(tmp_path / "results", channels=channels)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, make in files.items():
        make(src / name)
    image(out / "earlier.nrrd")
    before = snapshot(out), snapshot(src)
    code, stdout, err = hpcnn("predict", src, out, "--model", model, *args)
    assert code == 2, stdout + err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert "fix:" in err
    assert (snapshot(out), snapshot(src)) == before


def test_output_folder_equal_to_input_is_refused(tmp_path: Path, workspace, hpcnn,
                                                 sitk_available: None) -> None:
    model = fake_model(tmp_path / "results")
    src = tmp_path / "in"
    image(src / "a.nrrd")
    before = snapshot(src)
    code, _, err = hpcnn("predict", src, tmp_path / "x" / ".." / "in", "--model", model)
    assert code == 2 and "the output folder is the input folder" in err and "fix:" in err
    assert snapshot(src) == before


@pytest.mark.parametrize("existing, args", [
    (("a.nrrd", "sub/b.nrrd"), ()),  # an earlier run's results
    (("a.seg.nrrd",), ("--format", "seg.nrrd")),  # manual Slicer segmentations, same names
    (("hpcnn_predict.json",), ()),  # an earlier run's record
])
def test_existing_results_are_refused_without_force(existing: tuple[str, ...],
                                                    args: tuple[str, ...], tmp_path: Path,
                                                    workspace, hpcnn,
                                                    sitk_available: None) -> None:
    model = fake_model(tmp_path / "results")
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "a.nrrd")
    image(src / "sub" / "b.nrrd")
    for name in existing:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"made by hand")
    before = snapshot(out), snapshot(src)
    code, _, err = hpcnn("predict", src, out, "--model", model, *args)
    assert code == 2, err
    assert f"{len(existing)} file(s) this prediction would write exist already" in err
    for name in existing:
        assert name in err
    assert "--force" in err and "nothing was predicted" in err
    assert (snapshot(out), snapshot(src)) == before


def test_no_finished_fold_is_refused_and_missing_folds_are_named(tmp_path: Path, workspace,
                                                                 hpcnn) -> None:
    model = fake_model(tmp_path / "results", finished=(), unfinished=("0", "3"))
    image(tmp_path / "in" / "a.nrrd")
    code, _, err = hpcnn("predict", tmp_path / "in", tmp_path / "out", "--model", model)
    assert code == 2, err
    assert f"{model}: no finished fold" in err
    assert "fold(s) 1, 2, 4 not trained" in err and "fold(s) 0, 3 without checkpoint_final" in err
    assert "fix: train at least one fold" in err
    assert not (tmp_path / "out").exists()
    model = fake_model(tmp_path / "more", finished=("0", "1"), unfinished=("2",))
    code, _, err = hpcnn("predict", tmp_path / "in", tmp_path / "out", "--model", model,
                         "--folds", "0,2")
    assert code == 2 and "fold(s) 2 have no checkpoint_final.pth (finished: 0, 1)" in err
    assert model_folder.choose_folds(model_folder.open_model(model), None) == ["0", "1"]


def test_a_model_from_another_nnunetv2_is_named_per_fold(tmp_path: Path) -> None:
    model = fake_model(tmp_path, finished=("0", "1", "2", "3"))
    local = model_folder.local_nnunetv2_version()
    (model / "fold_0" / "hpcnn_provenance.json").write_text(
        json.dumps({"nnunetv2_version": "2.5.0"}))
    (model / "fold_1" / "hpcnn_provenance.json").write_text(
        json.dumps({"versions": {"nnunetv2": "2.5.0"}}))
    (model / "fold_2" / "hpcnn_provenance.json").write_text("{not json")
    (model / "fold_3" / "hpcnn_provenance.json").write_text(
        json.dumps({"nnunetv2_version": local}))
    lines = predict_service.version_warnings(model_folder.open_model(model), ["0", "1", "2", "3"])
    assert lines == [f"fold(s) 0, 1 were trained with nnunetv2 2.5.0, this machine has {local}: "
                     "predictions may differ or fail to load; install nnunetv2==2.5.0 here to "
                     "be sure"]


# ---- real predictions with the tiny model


def test_one_fold_slicer_output_and_version_warning(tiny_model: Path, tmp_path: Path,  # noqa: F811
                                                    workspace, hpcnn,
                                                    sitk_available: None) -> None:
    import SimpleITK as sitk

    model = tmp_path / "results" / tiny_model.parent.name / tiny_model.name
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("fold_1"))
    (model / "fold_0" / "hpcnn_provenance.json").write_text(
        json.dumps({"nnunetv2_version": "2.5.0"}))
    truth = unseen_cases(tmp_path / "in", ["Patient A (1).nrrd", "x-ray.scan.v2.nrrd"])
    # a manual segmentation under a result's name: refused, then replaced with --force
    write_slicer_seg(tmp_path / "out" / "Patient A (1).seg.nrrd", [], Grid((16, 16, 8)))
    code, out, err = hpcnn("predict", tmp_path / "in", tmp_path / "out", "--model", model,
                           "--format", "seg.nrrd", "--device", "cpu")
    assert code == 2 and "Patient A (1).seg.nrrd" in err and "--force" in err, out + err
    code, out, err = hpcnn("predict", tmp_path / "in", tmp_path / "out", "--model", model,
                           "--format", "seg.nrrd", "--device", "cpu", "--force")
    assert code == 0, out + err
    assert "fold(s) 0 (fold(s) 1, 2, 3, 4 not trained" in out
    assert "warning: fold(s) 0 were trained with nnunetv2 2.5.0" in err
    assert "predicting on the CPU: 16 network passes" in out and "--fast skips" in out
    # hpcnn's own lines and one bar over cases x folds; nnU-Net's chatter only in the log
    for chatter in ("I am process", "prediction completed", "perform_everything_on_device",
                    "Predicting case_", "Warning"):
        assert chatter not in out + err, chatter
    assert "2/2 fold passes" in err
    log = (tmp_path / "out" / "hpcnn_predict.log").read_text()
    assert "I am process 0 out of 1" in log and "Predicting case_0001" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["Patient A (1).seg.nrrd", "hpcnn_predict.json", "hpcnn_predict.log",
         "x-ray.scan.v2.seg.nrrd"]
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == \
        dict.fromkeys(["Patient A (1).seg.nrrd", "hpcnn_predict.json", "hpcnn_predict.log",
                       "x-ray.scan.v2.seg.nrrd"], 0o600)
    for name, case in truth.items():
        result = sitk.ReadImage(str(tmp_path / "out" / name.replace(".nrrd", ".seg.nrrd")))
        source = sitk.ReadImage(str(tmp_path / "in" / name))
        assert result.GetSize() == source.GetSize() and result.GetOrigin() == source.GetOrigin()
        segments = slicer.read_segments({k: result.GetMetaData(k)
                                         for k in result.GetMetaDataKeys()}, 1)
        assert [(s.name, s.value, s.layer) for s in segments] == [("liver", 1, 0),
                                                                  ("tumor", 2, 0)]
        labels = sitk.GetArrayFromImage(result)
        assert dice(labels > 0, case.expected(CLASSES, PRIORITY) > 0) > 0.5
    record = json.loads((tmp_path / "out" / "hpcnn_predict.json").read_text())
    assert record["folds"] == ["0"] and record["labels"] == {"background": 0, **CLASSES}


def test_two_folds_on_mixed_formats_then_evaluate(tiny_model: Path, tmp_path: Path,  # noqa: F811
                                                  workspace, hpcnn,
                                                  sitk_available: None) -> None:
    import SimpleITK as sitk

    names = ["Patient A (1).nrrd", "x-ray.scan.v2.nrrd", "ünï cödé.nii.gz"]
    truth = unseen_cases(tmp_path / "in", names)
    write_slicer_seg(tmp_path / "in" / "x-ray.scan.v2.seg.nrrd", [], truth[names[1]].grid)
    code, out, err = hpcnn("predict", tmp_path / "in", tmp_path / "out", "--model", tiny_model,
                           "--fast")
    assert code == 0, out + err
    assert "fold(s) 0, 1 (fold(s) 2, 3, 4 not trained" in out
    assert "skipped 1 segmentation(s)" in out
    assert "6/6 fold passes" in err  # 3 cases x 2 folds
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o700, "created private"
    results = {n: sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / n)))
               for n in names}

    # References as users have them: a label map, a cropped Slicer segmentation with its own
    # label values, a NIfTI label map; evaluate must pair them by name and map segments by name.
    ref = tmp_path / "ref"
    first, second, third = (truth[n] for n in names)
    write_image(ref / "Patient A (1)_label.nrrd",
                first.expected(CLASSES, PRIORITY).astype(np.uint8), first.grid)
    write_slicer_seg(ref / "x-ray.scan.v2.seg.nrrd",
                     [Segment("Tumor", second.masks["tumor"], label_value=7),
                      Segment("liver", second.masks["liver"] & ~second.masks["tumor"],
                              label_value=3)],
                     second.grid)
    write_image(ref / "ünï cödé.nii.gz",
                third.expected(CLASSES, PRIORITY).astype(np.uint8), third.grid)
    code, out, err = hpcnn("evaluate", tmp_path / "out", ref, "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert [(c["prediction"], c["reference"]) for c in report["cases"]] == [
        ("Patient A (1).nrrd", "Patient A (1)_label.nrrd"),
        ("x-ray.scan.v2.nrrd", "x-ray.scan.v2.seg.nrrd"),
        ("ünï cödé.nii.gz", "ünï cödé.nii.gz")]
    for row, name in zip(report["cases"], names, strict=True):
        expected = truth[name].expected(CLASSES, PRIORITY)
        for cls, value in CLASSES.items():
            assert row["dice"][cls] == pytest.approx(dice(results[name] == value,
                                                          expected == value))
    assert report["mean_dice"]["liver"] == pytest.approx(
        np.mean([c["dice"]["liver"] for c in report["cases"]]))
    assert report["foreground_mean_dice"] > 0.5
    code, out, _ = hpcnn("evaluate", tmp_path / "out", ref)
    assert code == 0 and "Dice liver" in out and "mean foreground Dice" in out
