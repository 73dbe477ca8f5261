"""Bad input for ``hpcnn dataset import`` (issue 4): each gives an error naming the file and
leaves nothing behind, or a named, reported fix whose result is checked voxel for voxel."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import synthetic
from synthetic import Grid, Segment
from test_dataset_import import read, run_import

from hpcnn.dataset.findings import ImportFailed
from hpcnn.dataset.importer import ImportResult
from hpcnn.dataset.layout import too_few_training

pytestmark = pytest.mark.usefixtures("sitk_available")


@pytest.fixture
def src(workspace: Path) -> Path:
    """Two good cases; each test adds its bad one."""
    folder = workspace / "exports"
    for key in ("a", "b"):
        synthetic.labelled_case(folder, key)
    return folder


@pytest.fixture
def fails(hpcnn, workspace: Path):
    """Run the CLI import and check it failed with every ``needle`` in the error, leaving no
    dataset and no temporary folder."""

    def check(src: Path, *needles: str, args: tuple[str, ...] = ()) -> str:
        code, out, err = hpcnn("dataset", "import", src, "--name", "Bad", "-j", "1",
                               "--test-fraction", "0", *args)
        assert code == 2, out + err
        for needle in needles:
            assert needle in err, err
        raw = workspace / "nnUNet_raw"
        assert not raw.exists() or list(raw.iterdir()) == []
        return err

    return check


def fixes(result: ImportResult, level: str = "fix") -> list[str]:
    """The findings of one level, as printed."""
    return [f.line() for f in result.findings if f.level == level]


# --- pairing ------------------------------------------------------------------------------


def test_image_without_segmentation_with_strict(src: Path, fails) -> None:
    synthetic.labelled_case(src, "lonely", seg=None)
    fails(src, "lonely.nrrd: image without a segmentation", "(--strict)", args=("--strict",))


def test_segmentation_without_image(src: Path, fails) -> None:
    grid = Grid((10, 10, 10))
    synthetic.write_slicer_seg(src / "orphan.seg.nrrd",
                               [Segment("liver", synthetic.sphere(grid, (5, 5, 5), 3))], grid)
    fails(src, "orphan.seg.nrrd: segmentation without an image")


def test_two_segmentations_for_one_case(src: Path, fails) -> None:
    synthetic.labelled_case(src, "a", seg="labelmap")
    fails(src, "a.seg.nrrd: two segmentations for one case: a.seg.nrrd, a_label.nrrd")


def test_a_segmentation_named_only_segmentation(src: Path, fails) -> None:
    (src / "Segmentation.seg.nrrd").write_bytes((src / "a.seg.nrrd").read_bytes())
    fails(src, "Segmentation.seg.nrrd: cannot tell which case", "--pattern")


def test_missing_channel(workspace: Path, fails) -> None:
    folder = workspace / "mr"
    for channel in ("T1", "T2"):
        synthetic.labelled_case(folder, f"c1_{channel}", seg=None)
    synthetic.labelled_case(folder, "c2_T1", seg=None)
    for key in ("c1", "c2"):
        (folder / f"{key}.seg.nrrd").write_bytes((folder / "c1_T1.nrrd").read_bytes())
    fails(folder, "c2_T1.nrrd: case 'c2' has no T2 image", args=("--channels", "T1,T2"))


# --- unreadable files ---------------------------------------------------------------------


@pytest.mark.parametrize("victim", ["c.nrrd", "c.seg.nrrd"])
def test_truncated_file(src: Path, fails, victim: str) -> None:
    synthetic.labelled_case(src, "c")
    data = (src / victim).read_bytes()
    (src / victim).write_bytes(data[: len(data) - 40])
    fails(src, f"{victim}: cannot read", "export or copy it again")


def test_not_an_image(src: Path, fails) -> None:
    synthetic.labelled_case(src, "d")
    (src / "d.nrrd").write_text("this is a text file, not a volume\n")
    fails(src, "d.nrrd: cannot read: not an image SimpleITK can read")


def test_2d_image_in_a_3d_dataset(src: Path, fails) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(src / "flat.nrrd"))
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkUInt8), str(src / "flat_label.nrrd"))
    fails(src, "flat.nrrd: is a 2-D image (size 16x16)", "flat_label.nrrd: segmentation is 2-D")


def test_nan_in_image(src: Path, fails) -> None:
    case = synthetic.labelled_case(src, "e")
    image = read(case.images[0]).astype(np.float32)
    image[3, 4, 5] = np.nan
    synthetic.write_image(case.images[0], image, case.grid)
    fails(src, "e.nrrd: 1 voxel(s) are NaN or infinite")


def test_broken_slicer_segment_table(src: Path, fails) -> None:
    path = src / "a.seg.nrrd"
    path.write_bytes(path.read_bytes().replace(b"Segment1_Layer:=0", b"Segment1_Layer:=5", 1))
    fails(src, "a.seg.nrrd: Slicer segment table: Segment1_Layer is 5 but the file has 1 layer")


# --- geometry -----------------------------------------------------------------------------


def _truth(case: synthetic.SyntheticCase) -> np.ndarray:
    return case.expected({"liver": 1, "tumor": 2}).astype(np.uint8)


def _variant(kind: str, grid: Grid, truth: np.ndarray) -> tuple[Grid, np.ndarray]:
    """The same labels stored on another grid; the physical positions of labelled voxels
    are unchanged."""
    size = np.asarray(grid.size)
    if kind == "size":  # more voxels at the far end
        return Grid(tuple(size + (4, 3, 2)), grid.spacing, grid.origin), np.pad(
            truth, ((0, 2), (0, 3), (0, 4)))
    if kind == "origin":  # starts two voxels earlier in x, one in y and z
        start = tuple(float(v) for v in grid.physical((-2, -1, -1)))
        return Grid(tuple(size + (2, 1, 1)), grid.spacing, start), np.pad(
            truth, ((1, 0), (1, 0), (2, 0)))
    if kind == "spacing":  # twice as fine
        return grid.refine(2), synthetic.upsample(truth, 2)
    if kind == "direction":  # x axis stored the other way round
        end = tuple(float(v) for v in grid.physical((size[0] - 1, 0, 0)))
        flipped = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        return Grid(grid.size, grid.spacing, end, flipped), truth[:, :, ::-1]
    if kind == "tolerance":  # a hundredth of a millimetre off, as after a format round trip
        return Grid(grid.size, grid.spacing, (grid.origin[0] + 0.01, *grid.origin[1:])), truth
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, report", [
    ("size", "covers another part of the same grid as its image"),
    ("origin", "covers another part of the same grid as its image"),
    ("spacing", "on another grid than its image"),
    ("direction", "on another grid than its image"),
    ("tolerance", "geometry differs slightly from its image's"),
])
def test_segmentation_on_another_grid_is_put_on_the_image_grid(
    workspace: Path, kind: str, report: str
) -> None:
    src = workspace / "src"
    cases = [synthetic.labelled_case(src, key, seg=None) for key in ("f", "g")]
    for case in cases:
        grid, labels = _variant(kind, case.grid, _truth(case)) if case.key == "f" else (
            case.grid, _truth(case))
        synthetic.write_image(src / f"{case.key}_label.nrrd", labels, grid)
    result = run_import(workspace, src)
    assert any(line.startswith(f"f_label.nrrd: {report}") for line in fixes(result)), fixes(result)
    for case in cases:
        assert np.array_equal(read(result.path / "labelsTr" / f"{case.key}.nrrd"), _truth(case))


@pytest.fixture
def plain_src(workspace: Path) -> Path:
    """Two good cases with plain label maps (a Slicer case beside a plain map needs
    labels.yaml's source_values: test_dataset_import_mixed.py)."""
    folder = workspace / "plain"
    for key in ("a", "b"):
        synthetic.labelled_case(folder, key, seg="labelmap")
    return folder


def test_segmentation_that_does_not_overlap_its_image(plain_src: Path, fails) -> None:
    src = plain_src
    case = synthetic.labelled_case(src, "h", seg=None)
    far = Grid(case.grid.size, case.grid.spacing, (900.0, 0.0, 0.0))
    synthetic.write_image(src / "h_label.nrrd", _truth(case), far)
    fails(src, "h_label.nrrd: does not overlap its image at all", "drawn on another volume")


# --- Slicer segments and label values -----------------------------------------------------


def _nested(folder: Path, key: str) -> synthetic.SyntheticCase:
    """A liver with a tumor inside, both whole segments: a 4-D (two-layer) .seg.nrrd."""
    case = synthetic.labelled_case(folder, key, seg=None)
    grid = case.grid
    masks = {"liver": synthetic.sphere(grid, (14, 10, 8), 6),
             "tumor": synthetic.sphere(grid, (15, 10, 8), 2.5)}
    synthetic.write_slicer_seg(folder / f"{key}.seg.nrrd",
                               [Segment(n, m) for n, m in masks.items()], grid)
    return synthetic.SyntheticCase(key, case.images, folder / f"{key}.seg.nrrd", grid, masks)


def test_overlapping_layers_error_without_overlap_and_resolved_with_it(
    src: Path, fails, workspace: Path
) -> None:
    case = _nested(src, "m")
    fails(src, "m.seg.nrrd: segments 'liver' and 'tumor' overlap in", "--overlap tumor,liver")
    result = run_import(workspace, src, overlap=("tumor", "liver"))
    label = read(result.path / "labelsTr" / "m.nrrd")
    assert np.array_equal(label, case.expected(result.labels, ("tumor", "liver")))
    assert (label == result.labels["tumor"]).sum() == case.masks["tumor"].sum()
    assert "m.seg.nrrd: voxels in both 'liver' and 'tumor' labelled 'tumor' (--overlap)" in \
        fixes(result)


def test_overlap_naming_an_unknown_class(src: Path, fails) -> None:
    fails(src, "--overlap names 'kidney', which is not a class", args=("--overlap", "kidney"))


def test_segment_missing_from_some_cases_is_reported_per_file(workspace: Path) -> None:
    src = workspace / "src"
    synthetic.labelled_case(src, "full", names=("liver", "tumor"))
    partial = synthetic.labelled_case(src, "partial", names=("liver",))
    result = run_import(workspace, src)
    assert fixes(result, "warning") == [
        "partial.seg.nrrd: no segment 'tumor': it is background in this case",
        too_few_training(2)]
    assert np.array_equal(read(result.path / "labelsTr" / "partial.nrrd"),
                          partial.expected(result.labels))


def test_unknown_segment_with_labels_yaml(workspace: Path) -> None:
    src = workspace / "src"
    case = synthetic.labelled_case(src, "k", names=("liver", "needle"))
    (workspace / "labels.yaml").write_text("liver: 1\n")
    result = run_import(workspace, src, labels_file=workspace / "labels.yaml")
    assert fixes(result, "warning") == ["k.seg.nrrd: unknown segment 'needle' (not in "
                                        "labels.yaml): left as background", too_few_training(1)]
    assert np.array_equal(read(result.path / "labelsTr" / "k.nrrd"),
                          case.masks["liver"].astype(np.uint8))


@pytest.mark.parametrize("text, needle", [
    ("liver: 1\ntumor:\n", "some classes have a value and some do not"),
    ("liver: [a]\ntumor: [A]\n", "'A' names both 'liver' and 'tumor'"),
    ("liver: {colour: red}\n", "unknown key(s) colour"),
    ("liver: [\n", "YAML syntax error"),
])
def test_bad_labels_yaml(src: Path, fails, workspace: Path, text: str, needle: str) -> None:
    (workspace / "labels.yaml").write_text(text)
    fails(src, "labels.yaml", needle, args=("--labels", str(workspace / "labels.yaml")))


def _label_map_case(folder: Path, key: str, labels: np.ndarray) -> synthetic.SyntheticCase:
    case = synthetic.labelled_case(folder, key, seg=None)
    synthetic.write_image(folder / f"{key}_label.nrrd", labels, case.grid)
    return case


def _two_values(case_grid: Grid, a: float, b: float, dtype: type) -> np.ndarray:
    masks = synthetic.organ_masks(case_grid)
    out = case_grid.zeros(dtype)
    out[masks["liver"]], out[masks["tumor"]] = a, b
    return out


def test_0_255_masks_with_and_without_remap(workspace: Path) -> None:
    src = workspace / "src"
    grid = synthetic.labelled_case(src, "n", seg=None).grid
    mask = _two_values(grid, 255, 255, np.uint8)
    synthetic.write_image(src / "n_label.nrrd", mask, grid)
    remapped = run_import(workspace, src, remap=("255:1",))
    assert remapped.labels == {"background": 0, "label_1": 1}
    assert np.array_equal(read(remapped.path / "labelsTr" / "n.nrrd"), (mask == 255) * 1)
    assert "label values remapped: 255→1" in fixes(remapped)
    renumbered = run_import(workspace / "again", src)
    assert renumbered.labels == {"background": 0, "label_255": 1}
    assert any("renumbered 255→1" in line for line in fixes(renumbered))


def test_labels_with_gaps_are_made_consecutive(workspace: Path) -> None:
    src = workspace / "src"
    grid = synthetic.labelled_case(src, "gap", seg=None).grid
    synthetic.write_image(src / "gap_label.nrrd", _two_values(grid, 1, 3, np.uint8), grid)
    result = run_import(workspace, src)
    assert result.labels == {"background": 0, "label_1": 1, "label_3": 2}
    assert any("renumbered 1→1, 3→2" in line for line in fixes(result))
    assert np.array_equal(read(result.path / "labelsTr" / "gap.nrrd"),
                          _two_values(grid, 1, 2, np.uint8))


def test_float_labels_with_whole_values_are_converted(workspace: Path) -> None:
    src = workspace / "src"
    grid = synthetic.labelled_case(src, "fl", seg=None).grid
    synthetic.write_image(src / "fl_label.nrrd", _two_values(grid, 1.0, 2.0, np.float32), grid)
    result = run_import(workspace, src)
    assert "fl_label.nrrd: label map stored as float32 with whole-number values: converted to " \
           "integers" in fixes(result)
    label = read(result.path / "labelsTr" / "fl.nrrd")
    assert label.dtype == np.uint8
    assert np.array_equal(label, _two_values(grid, 1, 2, np.uint8))


def test_float_labels_that_are_not_whole_numbers(src: Path, fails) -> None:
    grid = synthetic.labelled_case(src, "lin", seg=None).grid
    synthetic.write_image(src / "lin_label.nrrd", _two_values(grid, 1.0, 0.5, np.float32), grid)
    fails(src, "lin_label.nrrd: label values are not whole numbers (e.g. 0.5)")


def test_negative_labels_error_unless_remapped(plain_src: Path, fails, hpcnn,
                                              workspace: Path) -> None:
    src = plain_src
    grid = synthetic.labelled_case(src, "neg", seg=None).grid
    labels = _two_values(grid, 1, 2, np.int16)
    labels[0, 0, 0] = -1
    synthetic.write_image(src / "neg_label.nrrd", labels, grid)
    fails(src, "neg_label.nrrd: negative label value -1", "--remap=-1:0")
    code, out, err = hpcnn("dataset", "import", src, "--name", "Neg", "-j", "1", "--remap=-1:0")
    assert code == 0, err
    assert "label values remapped: -1→0" in out


def test_empty_segmentations_are_reported(workspace: Path) -> None:
    src = workspace / "src"
    for key in ("a", "b"):
        synthetic.labelled_case(src, key)
    slicer = synthetic.labelled_case(src, "blank", seg=None)
    synthetic.write_slicer_seg(src / "blank.seg.nrrd",
                               [Segment("liver", slicer.grid.zeros(bool))], slicer.grid)
    plain = synthetic.labelled_case(src, "zero", seg=None)
    synthetic.write_image(src / "zero_label.nrrd", plain.grid.zeros(np.uint8), plain.grid)
    result = run_import(workspace, src)
    assert [line for line in fixes(result, "warning") if "empty" in line] == [
        "blank.seg.nrrd: empty segmentation: no labelled voxels",
        "zero_label.nrrd: empty segmentation: no labelled voxels"]
    for key, case in (("blank", slicer), ("zero", plain)):
        label = read(result.path / "labelsTr" / f"{key}.nrrd")
        assert label.shape == case.grid.shape and not label.any()


# --- names, ids and formats ---------------------------------------------------------------


def test_duplicate_case_names_after_renaming(workspace: Path) -> None:
    src = workspace / "src"
    for key in ("liver 1", "liver_1", "liver-2"):
        synthetic.labelled_case(src, key)
    result = run_import(workspace, src)
    assert [c.case_id for c in result.cases] == ["case_001", "case_002", "case_003"]
    assert [c.images for c in result.cases] == [("liver 1.nrrd",), ("liver-2.nrrd",),
                                                ("liver_1.nrrd",)]
    assert any("'liver 1', 'liver_1' are empty or the same once made file-name safe" in line
               for line in fixes(result))


def test_an_id_used_by_another_dataset_in_results(src: Path, fails, workspace: Path) -> None:
    (workspace / "nnUNet_results" / "Dataset501_Other").mkdir(parents=True)
    err = fails(src, "nnUNet_results/Dataset501_Other", "two names", args=("--id", "501"))
    assert "--name Other" in err


def test_mixed_formats_become_nifti_with_a_notice(workspace: Path) -> None:
    src = workspace / "src"
    nrrd = synthetic.labelled_case(src, "one", seg="labelmap")
    nifti = synthetic.labelled_case(src, "two", seg="labelmap", image_ext=".nii.gz",
                                    label_ext=".nii.gz")
    result = run_import(workspace, src)
    assert result.file_ending == ".nii.gz"
    assert [f.message for f in result.findings if f.level == "notice"
            and "input formats" in f.message] == [
        "input formats .nii.gz, .nrrd: the dataset uses .nii.gz (--format chooses); "
        "1 image(s) converted"]
    for case in (nrrd, nifti):
        assert np.array_equal(read(result.path / "imagesTr" / f"{case.key}_0000.nii.gz"),
                              read(case.images[0]))
        assert np.array_equal(read(result.path / "labelsTr" / f"{case.key}.nii.gz"),
                              _truth(case))


def test_failure_in_the_service_lists_every_problem(src: Path, workspace: Path) -> None:
    synthetic.labelled_case(src, "c")
    (src / "c.nrrd").write_text("no image")
    (src / "b.seg.nrrd").write_bytes(gzip.compress(b"not a header"))
    with pytest.raises(ImportFailed) as caught:
        run_import(workspace, src)
    assert sorted(f.file for f in caught.value.findings) == ["b.seg.nrrd", "c.nrrd"]
    assert "2 problems; nothing was imported" in str(caught.value)


@pytest.mark.parametrize("text, needle", [
    ("image,segmentation\na.nrrd,missing.seg.nrrd\n", "list.csv:2: missing.seg.nrrd: no such file"),
    ("volume_path,seg\na.nrrd,a.seg.nrrd\n", "list.csv:1: no 'image' column"),
])
def test_bad_csv(src: Path, fails, text: str, needle: str) -> None:
    (src / "list.csv").write_text(text)
    fails(src / "list.csv", needle)


def test_pattern_without_a_case_group(src: Path, fails) -> None:
    fails(src, "has no (?P<case>...) group", args=("--pattern", r"\d+"))


def test_remap_of_a_value_no_label_map_holds(src: Path, workspace: Path) -> None:
    result = run_import(workspace, src, remap=("255:1",))
    assert "--remap 255:1: no plain label map holds the value 255" in fixes(result, "warning")


def test_a_single_image_as_source(src: Path, fails) -> None:
    fails(src / "a.nrrd", "a.nrrd: a single file", "pass the folder that holds it")
