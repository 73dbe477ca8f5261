"""``hpcnn preprocess``: refuses broken datasets, runs nnU-Net for real, keeps splits current.

The end-to-end test runs nnUNetv2_plan_and_preprocess twice on 6 (then 7) cases of 32^3 with two
workers (about 20 s each on 2 cores): the second run, after a case was added, must pass --clean
and regenerate splits_final.json so the new case lands in exactly one validation fold.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
from synthetic import Grid, ct_image, sphere, write_image, write_nnunet_dataset

import hpcnn.dataset
from hpcnn.config import Config
from hpcnn.dataset import layout, preprocess
from hpcnn.errors import ConfigError, DataError
from hpcnn.nnunet import launcher, launcher_path
from hpcnn.nnunet.launcher import splits_cover
from hpcnn.workspace import Workspace

NAME = "Dataset501_Liver"


def make_raw(workspace: Path, n_cases: int = 6, size: tuple[int, int, int] = (32, 32, 32)) -> Path:
    folder = workspace / "nnUNet_raw" / NAME
    write_nnunet_dataset(folder, n_cases=n_cases, size=size)
    return folder


def add_case(folder: Path, key: str) -> None:
    """One more labelled case like the generated ones, and numTraining to match."""
    grid = Grid((32, 32, 32))
    liver, tumor = sphere(grid, (16, 15, 17), 11.0), sphere(grid, (16, 15, 17), 4.0)
    write_image(folder / "imagesTr" / f"{key}_0000.nii.gz",
                ct_image(grid, {"liver": liver, "tumor": tumor}, np.random.default_rng(7)), grid)
    write_image(folder / "labelsTr" / f"{key}.nii.gz",
                (liver.astype(np.uint8) + tumor.astype(np.uint8)), grid)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["numTraining"] += 1
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))


def assert_splits_cover(path: Path, cases: list[str]) -> list[dict[str, list[str]]]:
    splits = json.loads(path.read_text())
    assert len(splits) == 5
    validation = [c for fold in splits for c in fold["val"]]
    assert sorted(validation) == sorted(cases), "every case in exactly one validation fold"
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(cases)
    return splits


def test_refuses_a_dataset_with_check_errors(workspace: Path, hpcnn,
                                             sitk_available: None) -> None:
    folder = make_raw(workspace, size=(16, 16, 8))
    (folder / "labelsTr" / "case_002.nii.gz").unlink()
    (folder / "labelsTr" / "notes.txt").write_text("x")
    code, _, err = hpcnn("preprocess", "501")
    assert code == 2
    assert "not preprocessing" in err and "labelsTr/case_002.nii.gz" in err
    assert "[missing-label]" in err and "stray-file" not in err, "errors only, warnings elided"
    assert not (workspace / "nnUNet_preprocessed").exists()


def test_prepare_decides_clean_workers_and_command(workspace: Path,
                                                   sitk_available: None) -> None:
    folder = make_raw(workspace, size=(16, 16, 8))
    ws = Workspace(workspace)
    out = ws.preprocessed / NAME

    def prepare(**kwargs: object) -> preprocess.PreprocessJob:
        return preprocess.prepare(ws, folder, configurations=["3d_fullres"], folds=range(5),
                                  **kwargs)

    job = prepare(workers=3)
    assert not job.clean and job.workers == 3
    assert job.command[1:] == [str(launcher_path()), "nnunet", "nnUNetv2_plan_and_preprocess",
                               "-d", "501", "--no_pp", "--verify_dataset_integrity",
                               "-npfp", "3", "--no_pbar"]
    assert job.env["nnUNet_preprocessed"] == str(ws.preprocessed)
    assert job.env["nnUNet_raw"] == str(ws.raw) and job.env["nnUNet_results"] == str(ws.results)
    assert job.cases == [f"case_{i:03d}" for i in range(6)]
    assert not out.exists(), "prepare writes nothing"

    out.mkdir(parents=True)
    (out / "dataset_fingerprint.json").write_text("{}")
    assert prepare().clean, "a fingerprint of unknown cases is recomputed"
    provenance = {"cases_sha256": preprocess.case_list_hash(job.cases),
                  "raw_sha256": job.raw_sha256}
    (out / preprocess.PROVENANCE).write_text(json.dumps(provenance))
    assert not prepare().clean, "same cases: the fingerprint stays"
    provenance["cases_sha256"] = preprocess.case_list_hash(job.cases[:-1])
    (out / preprocess.PROVENANCE).write_text(json.dumps(provenance))
    assert "--clean" in prepare().command, "changed cases: --clean"

    (ws.results / "Dataset501_Other").mkdir(parents=True)
    with pytest.raises(DataError, match="also names"):
        prepare()


def test_a_reimport_with_the_same_ids_passes_clean(workspace: Path,
                                                    sitk_available: None) -> None:
    """`dataset import --force` with fixed labels keeps the case ids: nnU-Net would reuse the
    stale fingerprint without --clean."""
    folder = make_raw(workspace, size=(16, 16, 8))
    ws = Workspace(workspace)
    out = ws.preprocessed / NAME

    def prepare() -> preprocess.PreprocessJob:
        return preprocess.prepare(ws, folder, configurations=["3d_fullres"], folds=range(5),
                                  workers=1)

    first = prepare()
    out.mkdir(parents=True)
    (out / "dataset_fingerprint.json").write_text("{}")
    (out / preprocess.PROVENANCE).write_text(json.dumps(
        {"cases_sha256": preprocess.case_list_hash(first.cases),
         "raw_sha256": first.raw_sha256}))
    assert not prepare().clean, "nothing changed"

    label = folder / "labelsTr" / "case_002.nii.gz"
    label.write_bytes((folder / "labelsTr" / "case_003.nii.gz").read_bytes())
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    job = prepare()
    assert job.clean and "--clean" in job.command and "raw files changed" in job.clean_reason

    (out / preprocess.PROVENANCE).write_text(json.dumps(
        {"cases_sha256": preprocess.case_list_hash(job.cases), "raw_sha256": job.raw_sha256}))
    assert not prepare().clean
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"]["tumour"] = meta["labels"].pop("tumor")
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    assert prepare().clean, "dataset.json changed"


def test_an_existing_split_is_kept_only_when_it_is_nnunets_five_folds(tmp_path: Path) -> None:
    cases = [f"c{i}" for i in range(10)]
    path = tmp_path / "splits_final.json"

    def covers(folds: list[list[str]], train: list[list[str]] | None = None) -> bool:
        splits = [{"train": (train[i] if train else [c for c in cases if c not in val]),
                   "val": val} for i, val in enumerate(folds)]
        path.write_text(json.dumps(splits))
        return splits_cover(path, set(cases))

    five = [cases[i::5] for i in range(5)]
    assert covers(five)
    assert not covers([cases[i::3] for i in range(3)]), "3 folds: folds 3 and 4 would fail"
    assert not covers([cases[i::6] for i in range(6)]), "6 folds"
    assert not covers([five[0] + five[1][:1], five[1], *five[2:]]), "c1 validated twice"
    assert not covers(five, train=[cases] * 5), "train overlaps val"
    assert not covers(five, train=[[c for c in cases if c not in v][1:] for v in five]), \
        "a case in neither train nor val"


def test_fold_and_split_constants_are_defined_once() -> None:
    names = {"NNUNET_FOLDS", "SPLITS", "MIN_TRAINING"}
    package = Path(hpcnn.dataset.__file__).parent
    defined: dict[str, list[str]] = {}
    for module in sorted(package.glob("*.py")):
        for node in ast.parse(module.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                for n in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(n, ast.Name) and n.id in names:
                        defined.setdefault(n.id, []).append(module.name)
    assert defined == {n: ["layout.py"] for n in names}
    # the pushed launcher cannot import hpcnn: its own copies must agree
    assert (launcher.SPLIT_FOLDS, launcher.SPLITS_FILE) == (layout.NNUNET_FOLDS, layout.SPLITS)


def test_the_dataset_is_the_argument_else_training_dataset(workspace: Path, hpcnn) -> None:
    assert layout.chosen_dataset("7", 501) == "7"
    assert layout.chosen_dataset(None, 501) == "501"
    with pytest.raises(ConfigError, match="training.dataset"):
        layout.chosen_dataset(None, None)
    with pytest.raises(ConfigError, match="training.dataset"):
        preprocess.prepare_configured(Config(), None)
    code, _, err = hpcnn("preprocess")
    assert code == 2 and "training.dataset" in err


def test_workers_fit_cores_cases_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "available_cpus", lambda: 16)
    monkeypatch.setattr(preprocess, "available_memory", lambda: 64 * 2**30)
    assert preprocess.size_workers(40, 128 * 128 * 64, 1)[0] == 16
    assert preprocess.size_workers(3, 128 * 128 * 64, 1)[0] == 3
    # 512x512x400 CT: about 7 GiB per worker, so 64 GiB fit 9 of them
    workers, why = preprocess.size_workers(40, 512 * 512 * 400, 1)
    assert workers == 9 and "64.0 GiB" in why
    monkeypatch.setattr(preprocess, "available_memory", lambda: 2**30)
    assert preprocess.size_workers(40, 512 * 512 * 400, 1)[0] == 1


def test_a_configuration_or_planner_nnunet_lacks_is_refused_before_anything_runs(
        workspace: Path, hpcnn, nnunet_available: None) -> None:
    make_raw(workspace, size=(16, 16, 8))
    code, _, err = hpcnn("preprocess", "501", "-c", "2d", "-c", "3d_fulres")
    assert code == 2 and "3d_fulres" in err and "did you mean 3d_fullres" in err
    code, _, err = hpcnn("preprocess", "501", "--planner", "nnUNetPlannerResEncXXL")
    assert code == 2 and "nnUNetPlannerResEncXXL" in err and "nnUNetPlannerResEncM" in err
    code, _, err = hpcnn("preprocess", "501", "--gpu-memory-target", "0")
    assert code == 2 and "--gpu-memory-target 0" in err
    assert not (workspace / "nnUNet_preprocessed").exists(), "nothing ran"


def test_preprocess_runs_nnunet_and_regenerates_splits_for_new_cases(
        workspace: Path, hpcnn, nnunet_available: None, sitk_available: None) -> None:
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    folder = make_raw(workspace)
    code, out, err = hpcnn("preprocess", "Liver", "--workers", "2", "-c", "3d_fullres", "-c",
                           "2d")
    assert code == 0, out + err
    pre = workspace / "nnUNet_preprocessed" / NAME
    log = workspace / ".hpcnn" / "logs" / f"preprocess-{NAME}.log"
    assert "Preprocessing dataset" not in out and "'patch_size'" not in out, "quiet"
    assert "Preprocessing dataset" in log.read_text(), "nnU-Net's output is in the log"
    assert log.stat().st_mode & 0o077 == 0
    assert "plans nnUNetPlans (nnUNetPlans.json)" in out
    assert "  2d: patch " in out and "  3d_fullres: patch 32x32x32, batch " in out
    assert (pre / "nnUNetPlans.json").is_file() and (pre / "dataset_fingerprint.json").is_file()
    data = pre / "nnUNetPlans_3d_fullres"
    cases = [f"case_{i:03d}" for i in range(6)]
    assert sorted(p.stem for p in data.glob("*.pkl")) == cases
    assert all((data / f"{c}.b2nd").is_file() and (data / f"{c}_seg.b2nd").is_file()
               for c in cases)
    assert sorted(p.name for p in (pre / "gt_segmentations").iterdir()) == \
        [f"{c}.nii.gz" for c in cases]
    provenance = json.loads((pre / "hpcnn_provenance.json").read_text())
    assert provenance["cases"] == cases and provenance["num_cases"] == 6
    assert provenance["cases_sha256"] == preprocess.case_list_hash(cases)
    assert provenance["nnunetv2_version"].startswith("2.")
    assert provenance["hpcnn_version"] and provenance["configurations"] == ["3d_fullres", "2d"]
    assert provenance["plans"] == "nnUNetPlans" and provenance["planner"] == "ExperimentPlanner"
    assert (pre / "nnUNetPlans_2d").is_dir()
    assert provenance["splits"] == "written" and provenance["clean"] is False
    splits = assert_splits_cover(pre / "splits_final.json", cases)
    assert splits == [{"train": list(s["train"]), "val": list(s["val"])}
                      for s in generate_crossval_split(cases, seed=12345, n_splits=5)]

    # the plans of 32^3 images have no 3d_lowres: refused after planning, before preprocessing
    before = (pre / "hpcnn_provenance.json").read_bytes()
    code, out, err = hpcnn("preprocess", "501", "-j", "2", "-c", "3d_lowres")
    assert code == 2 and "nnUNetPlans.json defines 2d, 3d_fullres, not 3d_lowres" in err, err
    assert (pre / "hpcnn_provenance.json").read_bytes() == before, "provenance untouched"

    add_case(folder, "case_006")
    code, out, err = hpcnn("preprocess", "501", "-j", "2", "--planner", "nnUNetPlannerResEncM")
    assert code == 0, out + err
    assert "plans nnUNetResEncUNetMPlans (nnUNetResEncUNetMPlans.json)" in out
    assert "--clean: the case list changed" in out
    cases.append("case_006")
    assert_splits_cover(pre / "splits_final.json", cases)
    provenance = json.loads((pre / "hpcnn_provenance.json").read_text())
    assert provenance["cases"] == cases and provenance["splits"] == "regenerated"
    assert provenance["clean"] is True and provenance["plans"] == "nnUNetResEncUNetMPlans"
    assert provenance["planner"] == "nnUNetPlannerResEncM"
    assert provenance["preprocessed"] == {"nnUNetResEncUNetMPlans": ["3d_fullres"]}, \
        "--clean: the earlier configurations' data are stale"
    assert provenance["data"] == {"3d_fullres": "nnUNetPlans_3d_fullres"}, "ResEnc reuses it"
    fingerprint = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == 7, "the fingerprint was recomputed"
