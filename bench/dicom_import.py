"""``hpcnn dataset import`` of a DICOM series vs SimpleITK's ImageSeriesReader + a NIfTI write.

Goal (issue 21): importing a 512x512x300 CT series costs <= 1.25x SimpleITK's
``ImageSeriesReader`` read plus a gzip NIfTI write of the same image.

Data: one case folder, written once to --data with hpcnn/services/demo_dicom_data.py: a
512x512x300 int16 CT-like series (smooth anatomy plus noise, so it compresses like a CT), one
file per slice, with an RTSTRUCT of one box ROI on 20 slices (the import needs a label; filling
it and writing the label map is part of the import's cost). Both sides run in this process with
SimpleITK on one thread. The baseline lists the series with GDCM (``GetGDCMSeriesFileNames``),
reads it and writes ``.nii.gz``; the import reads every header, checks the series (spacing, tilt,
decoder, references), reads the slices, fills the ROI, writes image, label, dataset.json,
cases.csv and the UID mapping. Runs are interleaved (harness.compare) and the medians compared.

Run: python bench/dicom_import.py [--repeats 3] [--data /tmp/hpcnn-bench-dicom]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from harness import compare, goal, load_average, report, time_call  # noqa: E402

SHAPE = (300, 512, 512)


def make_data(folder: Path) -> Path:
    """The fixed case folder, generated once (a marker file says it is complete)."""
    import shutil

    import numpy as np

    done = folder / ".complete"
    if not done.exists():
        from hpcnn.services import demo_dicom_data as dd

        shutil.rmtree(folder, ignore_errors=True)
        z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 230.0) ** 2 <= 1
        image = np.where(body, 40 + (z % 50), -1000).astype(np.int16)
        image += np.random.default_rng(0).integers(-20, 20, SHAPE, dtype=np.int16)
        series = dd.write_series(folder / "case", image, spacing=(0.7, 0.7, 1.0))
        dd.write_rtstruct(folder / "case" / "rs.dcm", series,
                          {"organ": {k: [dd.box_contour(200, 300, 180, 290)]
                                     for k in range(140, 160)}})
        done.write_text("")
    return folder


def baseline(data: Path, out: Path) -> None:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(data / "case"))
    reader.SetFileNames(files)
    sitk.WriteImage(reader.Execute(), str(out / "image.nii.gz"), True)


def run_import(data: Path, out: Path) -> None:
    from hpcnn.dataset.importer import ImportOptions, import_dataset
    from hpcnn.workspace import Workspace

    import_dataset(Workspace(out), ImportOptions(data, "Bench", modality=("CT",),
                                                 test_fraction=0.0, workers=1, force=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir())
                        / "hpcnn-bench-dicom" / "series")
    args = parser.parse_args()
    data = make_data(args.data)
    from hpcnn.dataset.workers import pin_simpleitk_threads

    pin_simpleitk_threads()
    print(f"one {'x'.join(map(str, SHAPE[::-1]))} CT series + RTSTRUCT in {data}; "
          f"{load_average()}")
    with tempfile.TemporaryDirectory(dir=data.parent) as out:
        b, c, ratio = compare(lambda: time_call(lambda: baseline(data, Path(out))),
                              lambda: time_call(lambda: run_import(data, Path(out))),
                              repeats=args.repeats, warmup=1)
    report("dataset import of a DICOM series (.nii.gz)",
           "SimpleITK ImageSeriesReader + .nii.gz write", b, c, ratio, goal=goal(ratio, 1.25))


if __name__ == "__main__":
    main()
