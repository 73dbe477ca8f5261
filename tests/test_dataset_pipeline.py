"""Issue 4's done criterion as a user runs it: Slicer-style exports → `hpcnn dataset import` →
`hpcnn dataset check` → `hpcnn preprocess` (real nnUNetv2_plan_and_preprocess with integrity
verification) → preprocessed data with provenance and splits covering every case."""

from __future__ import annotations

import json
from pathlib import Path

import synthetic


def test_slicer_exports_import_check_and_preprocess(workspace: Path, hpcnn, sitk_available: None,
                                                    nnunet_available: None) -> None:
    src = workspace.parent / "slicer exports"
    cases = synthetic.slicer_export(src)
    code, out, err = hpcnn("dataset", "import", src, "--name", "Liver", "--modality", "CT",
                           "--overlap", "tumor,liver,vessel", "--test-fraction", "0", "-j", "2")
    assert code == 0, err
    raw = workspace / "nnUNet_raw" / "Dataset501_Liver"
    assert len(list((raw / "labelsTr").iterdir())) == len(cases)

    code, out, err = hpcnn("dataset", "check", "Liver", "--json")
    assert code == 0, out + err
    assert not [p for p in json.loads(out) if p["severity"] == "error"]

    code, out, err = hpcnn("preprocess", "Liver", "-j", "2")
    assert code == 0, out + err
    pre = workspace / "nnUNet_preprocessed" / "Dataset501_Liver"
    assert (pre / "nnUNetPlans.json").is_file()
    assert len(list((pre / "gt_segmentations").iterdir())) == len(cases)
    provenance = json.loads((pre / "hpcnn_provenance.json").read_text())
    case_ids = sorted(p.name.removesuffix(".nrrd") for p in (raw / "labelsTr").iterdir())
    assert provenance["cases"] == case_ids
    splits = json.loads((pre / "splits_final.json").read_text())
    assert len(splits) == 5
    assert sorted(c for fold in splits for c in fold["val"]) == case_ids
