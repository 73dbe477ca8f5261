"""``hpcnn dataset import``: Slicer-style exports → a dataset nnU-Net accepts, equal to the
generator's ground truth voxel for voxel; determinism, parallel workers, the split, CSV input,
--pattern, channels and labels.yaml. Bad inputs: test_dataset_import_bad.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import synthetic

from hpcnn.dataset.importer import ImportOptions, ImportResult, import_dataset
from hpcnn.workspace import Workspace

PRIORITY = ("tumor", "liver", "vessel")


def read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def run_import(ws: Path, src: Path, **options: object) -> ImportResult:
    """The service, in this process, one worker, no test split unless asked."""
    options.setdefault("workers", 1)
    options.setdefault("test_fraction", 0.0)
    name = str(options.pop("name", "Test"))
    return import_dataset(Workspace(ws), ImportOptions(src, name, **options))  # type: ignore[arg-type]


def label_of(result: ImportResult, case: synthetic.SyntheticCase) -> np.ndarray:
    """The imported label map of a generated case, found through cases.csv."""
    with (result.path / "cases.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    image_row = next(r for r in rows if Path(r["source"]).name == case.images[0].name)
    label_row = next(r for r in rows if r["case_id"] == image_row["case_id"]
                     and r["role"] == "label")
    return read(result.path / label_row["output"])


def test_slicer_exports_become_a_dataset_nnunet_accepts_equal_to_the_truth(
    tmp_path: Path, sitk_available: None, nnunet_available: None
) -> None:
    """The done criterion: label values that differ between cases, cropped 3-D and 4-D
    (overlapping) segmentations, older RAS headers, names with spaces and umlauts."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    src = tmp_path / "exports"
    cases = synthetic.slicer_export(src)
    cases += synthetic.slicer_export(src, keys=("old slicer ras",), space=synthetic.RAS, seed=1)
    result = run_import(tmp_path / "ws", src, name="Liver", overlap=PRIORITY, modality=("CT",),
                        test_fraction=0.2)

    verify_dataset_integrity(str(result.path), num_processes=1)
    assert result.labels == {"background": 0, "liver": 1, "tumor": 2, "vessel": 3}
    assert (result.count("train"), result.count("test")) == (7, 1)
    assert len(list((result.path / "labelsTs").iterdir())) == 1
    for case in cases:
        label = label_of(result, case)
        expected = case.expected(result.labels, PRIORITY)
        assert np.array_equal(label, expected), case.key
        for name in case.masks:
            cls = result.labels[name]
            assert np.array_equal(label == cls, expected == cls), (case.key, name)
        assert (label == result.labels["tumor"]).sum() == case.masks["tumor"].sum()
    ids = sorted(p.name for p in (result.path / "imagesTr").iterdir())
    assert "Patient_02_u_0000.nrrd" in ids and "CT_scan_4_0000.nrrd" in ids
    dataset_json = json.loads((result.path / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT"}
    assert dataset_json["numTraining"] == 7
    assert dataset_json["file_ending"] == ".nrrd"
    assert dataset_json["overwrite_image_reader_writer"] == "SimpleITKIO"
    messages = [f.message for f in result.findings]
    assert any("'liver' is stored with label values" in m for m in messages)
    assert sum("cropped to its segments' extent" in m for m in messages) == len(cases)


def test_same_sources_give_identical_bytes_with_one_or_two_workers(
    tmp_path: Path, sitk_available: None
) -> None:
    src = tmp_path / "src"
    synthetic.slicer_export(src, keys=("a", "b b", "c", "d"))
    one = run_import(tmp_path / "ws1", src, overlap=PRIORITY, test_fraction=0.5, workers=1)
    two = run_import(tmp_path / "ws2", src, overlap=PRIORITY, test_fraction=0.5, workers=2)
    files = sorted(p.relative_to(one.path) for p in one.path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two.path) for p in two.path.rglob("*") if p.is_file())
    for rel in files:
        assert (one.path / rel).read_bytes() == (two.path / rel).read_bytes(), rel
    assert one.count("test") == 2


def test_cli_imports_reports_and_refuses_to_overwrite_without_force(
    workspace: Path, hpcnn, sitk_available: None
) -> None:
    src = workspace / "exports"
    synthetic.slicer_export(src, keys=("p1", "p2", "p3", "p4", "p5"), size=(24, 24, 16))
    args = ["dataset", "import", src, "--name", "Liver", "--overlap", "tumor,liver", "-j", "1"]
    code, out, err = hpcnn(*args)
    assert code == 0, err
    assert "Dataset501_Liver: 4 training, 1 test" in out  # the default 20 % test split
    assert "labels: background 0, liver 1, tumor 2, vessel 3" in out
    assert "warning: only 4 training case(s)" in out  # fewer than 5 folds
    first = (workspace / "nnUNet_raw/Dataset501_Liver/dataset.json").read_bytes()

    code, out, err = hpcnn(*args)
    assert code == 2
    assert "Dataset501_Liver already exists" in err and "--force" in err

    code, out, err = hpcnn(*args, "--force")
    assert code == 0, err
    assert sorted(p.name for p in (workspace / "nnUNet_raw").iterdir()) == ["Dataset501_Liver"]
    assert (workspace / "nnUNet_raw/Dataset501_Liver/dataset.json").read_bytes() == first

    code, out, err = hpcnn(*args[:-2], "--name", "Other", "--id", "501")  # another name, same id
    assert code == 2 and "already exists" in err


def test_images_without_segmentation_go_to_imagests_and_are_listed(
    tmp_path: Path, sitk_available: None
) -> None:
    src = tmp_path / "src"
    for key in ("a", "b"):
        synthetic.labelled_case(src, key)
    synthetic.labelled_case(src, "new patient", seg=None)
    result = run_import(tmp_path / "ws", src)
    assert (result.path / "imagesTs" / "new_patient_0000.nrrd").is_file()
    assert not (result.path / "labelsTs").exists()
    warned = [f for f in result.findings
              if f.level == "warning" and "without a segmentation" in f.message]
    assert [f.file for f in warned] == ["new patient.nrrd"]
    rows = list(csv.DictReader((result.path / "cases.csv").open(encoding="utf-8")))
    assert {r["split"] for r in rows if r["case_id"] == "new_patient"} == {"unlabelled"}


def test_csv_input_and_labels_yaml_with_synonyms(tmp_path: Path, sitk_available: None) -> None:
    src = tmp_path / "data"
    a = synthetic.labelled_case(src / "imgs", "scan1", names=("Leber", "tumour"))
    b = synthetic.labelled_case(src / "imgs", "scan2", names=("liver", "Lesion"), values=(4, 2))
    (src / "list.csv").write_text(
        "image,segmentation\n"
        "imgs/scan1.nrrd,imgs/scan1.seg.nrrd\n"
        "imgs/scan2.nrrd,imgs/scan2.seg.nrrd\n", encoding="utf-8")
    labels = tmp_path / "labels.yaml"
    labels.write_text("tumor: [lesion, tumour]\nliver:\n  synonyms: [leber]\n")
    result = run_import(tmp_path / "ws", src / "list.csv", labels_file=labels)
    assert result.labels == {"background": 0, "tumor": 1, "liver": 2}
    for case, (liver, tumor) in ((a, ("Leber", "tumour")), (b, ("liver", "Lesion"))):
        classes = {liver: 2, tumor: 1}
        assert np.array_equal(label_of(result, case), case.expected(classes))


def test_channels_pattern_and_nifti_output(tmp_path: Path, sitk_available: None) -> None:
    """Two channels by suffix, labels named mask_<case> found through --pattern, NIfTI in."""
    src = tmp_path / "src"
    grid = synthetic.Grid((20, 18, 12))
    rng = np.random.default_rng(0)
    truths = {}
    for key in ("7", "8"):
        masks = synthetic.organ_masks(grid, ("liver",))
        for channel in ("T2", "T1"):
            synthetic.write_image(src / f"img_{key}_{channel}.nii.gz",
                                  synthetic.ct_image(grid, masks, rng), grid)
        synthetic.write_image(src / f"mask_{key}.nii.gz", masks["liver"].astype(np.uint8), grid)
        truths[key] = masks["liver"]
    result = run_import(tmp_path / "ws", src, channels=("T1", "T2"), modality=("MR",),
                        pattern=r"^(?:(?P<label>mask)|img)_(?P<case>\d+)(?:_(?P<channel>T\d))?$")
    assert result.file_ending == ".nii.gz"
    assert result.channel_names == {"0": "MR", "1": "MR"}
    for key, truth in truths.items():
        t1 = read(result.path / "imagesTr" / f"{key}_0000.nii.gz")
        assert np.array_equal(t1, read(src / f"img_{key}_T1.nii.gz"))
        assert np.array_equal(read(result.path / "labelsTr" / f"{key}.nii.gz"), truth)
    rows = list(csv.DictReader((result.path / "cases.csv").open(encoding="utf-8")))
    assert [(r["channel"], r["source"]) for r in rows if r["case_id"] == "7"] == [
        ("0", "img_7_T1.nii.gz"), ("1", "img_7_T2.nii.gz"), ("", "mask_7.nii.gz")]


@pytest.mark.parametrize("name, suffix", [
    ("case7", "_label.nii.gz"), ("case7", "-label.nrrd"), ("case7", " Segmentation.seg.nrrd"),
    ("Case7", "_seg.nii.gz"), ("case7_img", "_mask.nii.gz")])
def test_naming_rules_pair_common_export_names(tmp_path: Path, name: str, suffix: str) -> None:
    from hpcnn.dataset.sources import discover

    (tmp_path / f"{name}.nrrd").write_bytes(b"")
    (tmp_path / f"case7{suffix}").write_bytes(b"")
    (tmp_path / "scene.mrml").write_bytes(b"")
    found = discover(tmp_path)
    assert [(c.key.lower(), c.segmentation and c.segmentation.display) for c in found.cases] == [
        (name.lower().removesuffix("_img"), f"case7{suffix}")]
    assert "ignored 1 file(s), not an image file: scene.mrml" in found.findings[0].message


def test_an_interrupted_import_leaves_the_previous_dataset_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sitk_available: None
) -> None:
    import hpcnn.dataset.importer as importer

    src = tmp_path / "src"
    for key in ("a", "b", "c"):
        synthetic.labelled_case(src, key)
    before = run_import(tmp_path / "ws", src)
    snapshot = {p: p.read_bytes() for p in before.path.rglob("*") if p.is_file()}
    real, written = importer._write, []

    def interrupted(task: object) -> object:
        if written:
            raise KeyboardInterrupt
        written.append(task)
        return real(task)

    monkeypatch.setattr(importer, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_import(tmp_path / "ws", src, force=True)
    assert [p.name for p in (tmp_path / "ws" / "nnUNet_raw").iterdir()] == [before.path.name]
    assert {p: p.read_bytes() for p in before.path.rglob("*") if p.is_file()} == snapshot


def test_default_workers_are_the_cpus_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sitk_available: None
) -> None:
    """os.cpu_count() counts the whole node; a batch job may use only its cgroup's cores."""
    from hpcnn.dataset import importer

    src = tmp_path / "src"
    for key in ("a", "b", "c"):
        synthetic.labelled_case(src, key)
    used: list[int] = []
    real_runner = importer.runner

    def spy(workers: int, *args: object, **kwargs: object) -> object:
        used.append(workers)
        return real_runner(1, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr(importer, "available_cpus", lambda: 2, raising=False)
    monkeypatch.setattr(importer, "runner", spy)
    run_import(tmp_path / "ws", src, workers=None)
    assert used == [2]
