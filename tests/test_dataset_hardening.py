"""Issue 8 (dataset items 1 and 3-7): damaged payloads, nnU-Net's own variables, duplicate
segments, a split that trains every class, detached headers, and the smaller wording fixes.
Each test builds the input that broke, and checks the file named and the fix given."""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import synthetic
from synthetic import Grid, Segment
from test_dataset_import import read, run_import
from test_dataset_import_bad import fails, src  # noqa: F401  (fixtures)

from hpcnn.dataset.check import check_dataset
from hpcnn.dataset.findings import ImportFailed
from hpcnn.dataset.layout import too_few_training

pytestmark = pytest.mark.usefixtures("sitk_available")


def _gzip_nrrd_with_bad_crc(path: Path, extra: int = 1000) -> None:
    """The damage SimpleITK reads without a word: the gzip stream holds more than the header
    declares (the reader stops at the declared length) and its CRC fails."""
    header, data = path.read_bytes().split(b"\n\n", 1)
    stream = bytearray(gzip.compress(gzip.decompress(data) + b"\0" * extra, mtime=0))
    stream[-8] ^= 0xFF  # the CRC32 field of the gzip trailer
    path.write_bytes(header + b"\n\n" + bytes(stream))


def _raw_nrrd_with_extra_bytes(path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(path)), str(path), False)
    path.write_bytes(path.read_bytes() + b"\x07" * 512)


@pytest.mark.parametrize("damage, needle", [
    (_gzip_nrrd_with_bad_crc, "the gzip data are corrupt (gzip CRC check failed)"),
    (_raw_nrrd_with_extra_bytes, "18432 bytes of voxel data, more than the 17920 bytes the "
                                 "header declares (28x20x16 short)"),
])
def test_a_damaged_payload_is_refused_by_import_and_check(src: Path, fails, tmp_path: Path,  # noqa: F811
                                                          damage, needle: str) -> None:
    import SimpleITK as sitk

    synthetic.labelled_case(src, "c")
    damage(src / "c.nrrd")
    sitk.ReadImage(str(src / "c.nrrd"))  # the premise: SimpleITK alone does not notice
    fails(src, f"c.nrrd: cannot read: {needle}", "export or copy it again")

    dataset = tmp_path / "ds" / "Dataset501_X"
    synthetic.write_nnunet_dataset(dataset, file_ending=".nrrd", size=(28, 20, 16))
    damage(dataset / "imagesTr" / "case_002_0000.nrrd")
    report = check_dataset(dataset, workers=1)
    problems = [(p.file, p.code) for p in report.errors]
    assert problems == [("imagesTr/case_002_0000.nrrd", "corrupt-data")]
    assert needle in report.errors[0].message and "export" in report.errors[0].hint


def test_nnunet_variables_win_over_the_workspace_and_commands_say_where(
    workspace: Path, hpcnn, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = workspace / "exports"
    for key in ("a", "b", "c"):
        synthetic.labelled_case(source, key)
    elsewhere = workspace.parent / "data"
    monkeypatch.setenv("nnUNet_raw", str(elsewhere / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(elsewhere / "pre"))
    code, out, err = hpcnn("dataset", "import", source, "--name", "Env", "-j", "1")
    assert code == 0, out + err
    assert (elsewhere / "raw" / "Dataset501_Env" / "dataset.json").is_file()
    assert not (workspace / "nnUNet_raw").exists()
    assert f"writes nnUNet_raw {elsewhere / 'raw'} ($nnUNet_raw)" in out
    code, out, err = hpcnn("dataset", "check", "Env")
    assert f"reads {elsewhere / 'raw' / 'Dataset501_Env'}" in out and "($nnUNet_raw)" in out
    monkeypatch.delenv("nnUNet_raw")
    code, out, err = hpcnn("dataset", "check", "Env")
    assert code == 2 and "no dataset 'Env'" in err
    code, out, err = hpcnn("preprocess", "Env")
    assert f"writes nnUNet_preprocessed {elsewhere / 'pre'} ($nnUNet_preprocessed)" in out
    assert f"reads nnUNet_raw {workspace / 'nnUNet_raw'} (workspace)" in out


def test_two_segments_with_one_name_in_one_file_are_an_error(src: Path, fails) -> None:  # noqa: F811
    grid = Grid((28, 20, 16), (1.0, 1.0, 2.0), (5.0, -3.0, 10.0))
    synthetic.write_image(src / "d.nrrd", grid.zeros(np.int16), grid)
    synthetic.write_slicer_seg(src / "d.seg.nrrd", [
        Segment("liver", synthetic.sphere(grid, (7, 10, 8), 4), label_value=1),
        Segment("Liver", synthetic.sphere(grid, (20, 10, 8), 4), label_value=3)], grid)
    err = fails(src, "d.seg.nrrd: two segments named 'liver', label value 1 (layer 0) and label "
                     "value 3 (layer 0)", "delete the duplicate")
    assert "different files" not in err


def _labels_in_training(result) -> set[int]:
    return set().union(*(set(np.unique(read(p)).tolist())
                         for p in (result.path / "labelsTr").iterdir()))


@pytest.mark.parametrize("seed", range(6))
def test_the_split_keeps_every_class_in_training(tmp_path: Path, seed: int) -> None:
    source = tmp_path / "src"
    for key in ("a", "b", "c", "d", "e"):
        synthetic.labelled_case(source, key, names=("liver",))
    synthetic.labelled_case(source, "rare", names=("liver", "vessel"))
    result = run_import(tmp_path / "ws", source, test_fraction=0.5, seed=seed)
    assert _labels_in_training(result) == {0, 1, 2}
    assert (result.count("train"), result.count("test")) == (3, 3)
    moved = [f.line() for f in result.findings if "moved to training" in f.message]
    with (result.path / "cases.csv").open(encoding="utf-8") as fh:
        rare = next(r for r in csv.DictReader(fh) if r["source"] == "rare.nrrd")
    assert rare["split"] == "train"
    if moved:
        assert moved[0].startswith("rare: moved to training and ")


def test_a_class_in_no_case_is_a_warning_and_the_check_says_where(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for key in "abcdef":
        synthetic.labelled_case(source, key, names=("liver",))
    (tmp_path / "labels.yaml").write_text("liver: 1\nvessel: 2\n")
    result = run_import(tmp_path / "ws", source, labels_file=tmp_path / "labels.yaml")
    assert ("class 'vessel' is in no segmentation: nnU-Net would train a class it never sees"
            in [f.message for f in result.findings if f.level == "warning"])
    report = check_dataset(result.path, workers=1)
    never = [p.message for p in report.problems if p.code == "label-never-present"]
    assert never == ['label "vessel" (2) occurs in no training label (labelsTr): nnU-Net trains '
                     "a class it never sees"]


# --- item 6 ---------------------------------------------------------------------------------


def test_read_errors_keep_the_reason(src: Path, fails) -> None:  # noqa: F811
    synthetic.labelled_case(src, "t")
    data = (src / "t.nrrd").read_bytes()
    (src / "t.nrrd").write_bytes(data[:-40])
    err = fails(src, "t.nrrd: cannot read: cut short: expected 17920 bytes of voxel data")
    assert re.search(r"received \d+", err)
    synthetic.labelled_case(src, "t", image_ext=".nhdr")
    (src / "t.nrrd").unlink()
    (src / "t.raw.gz").unlink()
    fails(src, "t.nhdr: its data file t.raw.gz does not exist")


def test_force_over_another_name_says_what_it_replaced(workspace: Path, hpcnn) -> None:
    source = workspace / "src"
    for key in ("a", "b", "c"):
        synthetic.labelled_case(source, key)
    assert hpcnn("dataset", "import", source, "--name", "Old", "--id", "501", "-j", "1")[0] == 0
    code, out, err = hpcnn("dataset", "import", source, "--name", "New", "--id", "501", "-j", "1",
                           "--force")
    assert code == 0, err
    assert "replaced Dataset501_Old (3 training, 0 test cases) with the new import" in out
    assert [p.name for p in (workspace / "nnUNet_raw").iterdir()] == ["Dataset501_New"]


def test_case_renames_are_printed(workspace: Path, hpcnn) -> None:
    source = workspace / "src"
    for key in ("Patient 01", "Pätient 02", "c"):
        synthetic.labelled_case(source, key)
    code, out, err = hpcnn("dataset", "import", source, "--name", "R", "-j", "1")
    assert code == 0, err
    assert "case names made file-name safe: 'Patient 01' → Patient_01" in out
    assert "'Pätient 02' → Patient_02" in out


def test_an_oversized_segmentation_is_not_called_cropped_and_directions_are_shown(
    tmp_path: Path
) -> None:
    source = tmp_path / "src"
    for key in ("a", "b"):
        synthetic.labelled_case(source, key)
    grid = Grid((28, 20, 16), (1.0, 1.0, 2.0), (5.0, -3.0, 10.0))
    synthetic.labelled_case(source, "big", grid=grid, seg=None)
    bigger = Grid((34, 26, 20), grid.spacing, tuple(np.asarray(grid.origin)  # type: ignore[arg-type]
                                                     - np.asarray([3.0, 3.0, 4.0])))
    synthetic.write_slicer_seg(source / "big.seg.nrrd",
                               [Segment("liver", synthetic.box(bigger, (1, 1, 1), (14, 25, 19))),
                                Segment("tumor", synthetic.sphere(bigger, (24, 12, 9), 3))],
                               bigger, crop=False)
    flipped = Grid(grid.size, grid.spacing,
                   tuple(grid.physical((27, 0, 0))),  # type: ignore[arg-type]
                   (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    synthetic.labelled_case(source, "flip", grid=grid, seg=None)
    synthetic.write_slicer_seg(source / "flip.seg.nrrd",
                               [Segment("liver", synthetic.sphere(flipped, (9, 10, 8), 4)),
                                Segment("tumor", synthetic.sphere(flipped, (20, 10, 8), 3))],
                               flipped)
    result = run_import(tmp_path / "ws", source)
    lines = [f.line() for f in result.findings]
    big = [t for t in lines if t.startswith("big.seg.nrrd")]
    assert big and not any("as Slicer saves it" in t for t in big), big
    assert any("covers another part of the same grid" in t for t in big), big
    flip = [t for t in lines if t.startswith("flip.seg.nrrd")]
    assert any("direction (-1, 0, 0, 0, 1, 0, 0, 0, 1)" in t for t in flip), flip


def test_import_and_check_agree_on_too_few_training_cases(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for key in ("a", "b", "c"):
        synthetic.labelled_case(source, key)
    result = run_import(tmp_path / "ws", source)
    imported = [(f.level, f.message) for f in result.findings if "training case" in f.message]
    report = check_dataset(result.path, workers=1)
    checked = [(p.level, p.message) for p in report.problems if p.code == "too-few-cases"]
    assert imported == checked == [("warning", too_few_training(3))]


def test_fix_hints_are_shell_quoted(src: Path, fails) -> None:  # noqa: F811
    grid = Grid((20, 20, 12))
    big = synthetic.sphere(grid, (10, 10, 6), 5)
    synthetic.write_image(src / "o.nrrd", grid.zeros(np.int16), grid)
    synthetic.write_slicer_seg(src / "o.seg.nrrd", [Segment("overlapping sphere", big),
                                                    Segment("ribs", big & (grid.zeros() == 0))],
                               grid)
    fails(src, "pass --overlap 'ribs,overlapping sphere' (the first listed wins)")


def test_a_symbolic_link_loop_gets_its_own_message(workspace: Path, hpcnn, src: Path) -> None:  # noqa: F811
    loop = workspace / "loop"
    loop.symlink_to(loop)
    code, out, err = hpcnn("dataset", "import", loop, "--name", "L")
    assert code == 2 and "loop: a symbolic link to" in err and "loops back on itself" in err
    (src / "inner.nrrd").symlink_to(src / "inner.nrrd")
    code, out, err = hpcnn("dataset", "import", src, "--name", "L", "-j", "1")
    assert code == 2 and "inner.nrrd: a symbolic link that loops back on itself" in err


def test_strict_hints_do_not_suggest_strict(src: Path, fails) -> None:  # noqa: F811
    synthetic.labelled_case(src, "lonely", seg=None)
    err = fails(src, "lonely.nrrd: image without a segmentation", args=("--strict",))
    assert "--strict to refuse" not in err


def test_labels_yaml_format_is_in_the_help(hpcnn) -> None:
    code, out, _ = hpcnn("dataset", "import", "--help")
    assert code == 0
    for line in ("liver:                      # class 1", "source_values: [1, 255]",
                 "tumor: [lesion, tumour]", "background: [unlabelled]"):
        assert line in out


# --- item 7: detached headers -------------------------------------------------------------


def test_detached_headers_are_images_and_segmentations(tmp_path: Path) -> None:
    source = tmp_path / "src"
    cases = [synthetic.labelled_case(source, key, image_ext=image, seg="labelmap",
                                     label_ext=label)
             for key, image, label in (("n1", ".nhdr", ".nhdr"), ("m1", ".mhd", ".mhd"),
                                       ("n2", ".nhdr", ".nrrd"))]
    assert {p.suffix for p in source.iterdir()} >= {".gz", ".zraw"}  # data files beside them
    result = run_import(tmp_path / "ws", source)
    assert result.count("train") == 3 and result.file_ending == ".nii.gz"
    assert not [f for f in result.findings if "ignored" in f.message or f.level == "error"]
    for case in cases:
        image = next((result.path / "imagesTr").glob(f"{case.key}_0000*"))
        assert np.array_equal(read(image), read(case.images[0]))
        label = read(result.path / "labelsTr" / f"{case.key}.nii.gz")
        assert case.segmentation is not None and label.any()
        assert np.array_equal(label, read(case.segmentation))


def test_bzip2_nrrd_names_the_encoding_and_the_fix(src: Path, fails) -> None:  # noqa: F811
    import bz2

    synthetic.labelled_case(src, "z")
    header, data = (src / "z.nrrd").read_bytes().split(b"\n\n", 1)
    header = header.replace(b"encoding: gzip", b"encoding: bzip2")
    (src / "z.nrrd").write_bytes(header + b"\n\n" + bz2.compress(gzip.decompress(data)))
    fails(src, "z.nrrd: its data are bzip2-compressed, an encoding SimpleITK cannot read",
          "save it again with gzip compression")


def test_nhdr_whose_data_file_is_a_nifti_needs_byte_skip(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for key in ("a", "b"):
        synthetic.labelled_case(source, key)
    case = synthetic.labelled_case(source, "n", image_ext=".nii")
    header = (source / "a.nrrd").read_bytes().split(b"\n\n", 1)[0].decode()
    header = re.sub(r"encoding: \w+", "encoding: raw", header)  # same grid and type as n.nii
    nhdr = source / "n.nhdr"
    nhdr.write_text(header + "\ndata file: n.nii\n")
    with pytest.raises(ImportFailed) as failed:
        run_import(tmp_path / "ws", source)
    assert "n.nhdr: cannot read: its data file n.nii: " in str(failed.value)
    assert "byte skip: -1" in str(failed.value)
    nhdr.write_text(nhdr.read_text().replace("data file:", "byte skip: -1\ndata file:"))
    result = run_import(tmp_path / "ws", source)  # n.nii is n.nhdr's data, not a case
    assert result.count("train") == 3
    assert np.array_equal(read(result.path / "imagesTr" / "n_0000.nrrd"), read(case.images[0]))
