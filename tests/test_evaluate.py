"""``hpcnn evaluate`` compares every reference voxel or refuses (issue 19 item 6).

Label maps written here in a second; no model, no network. The case that hurt: a prediction on
a grid smaller than its reference's, whose labelled voxels outside it were dropped, so Dice rose
from the true value to near 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import Grid, box, write_image

pytestmark = pytest.mark.usefixtures("sitk_available")

GRID = Grid((20, 20, 10))


def _pair(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A reference with two blobs of class 1 and a prediction that finds only the first."""
    ref = box(GRID, (2, 2, 2), (8, 8, 8)).astype(np.uint8)
    ref |= box(GRID, (14, 14, 2), (18, 18, 8)).astype(np.uint8)
    pred = box(GRID, (2, 2, 2), (8, 8, 8)).astype(np.uint8)
    return pred, ref


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_a_prediction_on_a_smaller_grid_is_refused(tmp_path: Path, hpcnn) -> None:
    pred, ref = _pair(tmp_path)
    small = GRID.crop((0, 0, 0), (12, 12, 10))  # the second blob lies outside it
    write_image(tmp_path / "pred" / "c1.nrrd", pred[:, :12, :12].copy(), small)
    write_image(tmp_path / "ref" / "c1.nrrd", ref, GRID)
    code, out, err = hpcnn("evaluate", tmp_path / "pred", tmp_path / "ref", "--json")
    assert code == 2, out + err
    lost = int(ref.sum() - ref[:, :12, :12].sum())
    assert f"c1.nrrd: {lost} labelled voxel(s) lie outside the grid of the prediction" in err
    assert "inflate" in err and "fix:" in err and out == ""


def test_a_reference_on_another_lattice_is_refused(tmp_path: Path, hpcnn) -> None:
    pred, ref = _pair(tmp_path)
    write_image(tmp_path / "pred" / "c1.nrrd", pred, GRID)
    write_image(tmp_path / "ref" / "c1.nrrd", ref, Grid(GRID.size, (1.0, 1.0, 2.0)))
    code, _, err = hpcnn("evaluate", tmp_path / "pred", tmp_path / "ref")
    assert code == 2 and "c1.nrrd: on another grid than the prediction c1.nrrd" in err, err


def test_a_cropped_reference_inside_the_prediction_counts_every_voxel(tmp_path: Path,
                                                                      hpcnn) -> None:
    pred, ref = _pair(tmp_path)
    crop = GRID.crop((1, 1, 1), (19, 19, 9))  # Slicer's crop to the segment's extent
    write_image(tmp_path / "pred" / "c1.nrrd", pred, GRID)
    write_image(tmp_path / "ref" / "c1.seg.nrrd", ref[1:9, 1:19, 1:19].copy(), crop)
    code, out, err = hpcnn("evaluate", tmp_path / "pred", tmp_path / "ref", "--json")
    assert code == 0, out + err
    assert json.loads(out)["cases"][0]["dice"]["label 1"] == pytest.approx(_dice(pred, ref))


def test_float_label_maps_and_unpaired_files_are_reported(tmp_path: Path, hpcnn) -> None:
    pred, ref = _pair(tmp_path)
    write_image(tmp_path / "pred" / "c1.nrrd", pred.astype(np.float32), GRID)
    write_image(tmp_path / "ref" / "c1.nrrd", ref, GRID)
    write_image(tmp_path / "ref" / "c2.nrrd", ref, GRID)  # never predicted
    write_image(tmp_path / "pred" / "c3.nrrd", pred, GRID)  # no reference
    code, out, err = hpcnn("evaluate", tmp_path / "pred", tmp_path / "ref", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["cases"][0]["dice"]["label 1"] == pytest.approx(_dice(pred, ref))
    assert report["references_without_prediction"] == ["c2.nrrd"]
    assert report["predictions_without_reference"] == ["c3.nrrd"]
    assert "no prediction in" in err and "1 reference(s), not evaluated: c2.nrrd" in err
    assert "no reference in" in err and "c3.nrrd" in err
    assert "c1.nrrd: a label map stored as float32" in err

    probabilities = pred.astype(np.float32) * 0.5
    write_image(tmp_path / "pred" / "c1.nrrd", probabilities, GRID)
    code, out, err = hpcnn("evaluate", tmp_path / "pred", tmp_path / "ref")
    assert code == 2, out + err
    assert f"c1.nrrd: not a label map: {int(pred.sum())} voxel(s) are not whole numbers " \
           "(e.g. 0.5; stored as float32)" in err
