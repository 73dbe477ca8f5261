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

Memory (``--memory SLICES``, e.g. 3000): a series of that many 256x256 slices (an RTSTRUCT of
one box on 20 slices as its label), each
side in its own fresh process, peak RSS reported above a process that only imported the same
libraries: SimpleITK's ImageSeriesReader read + NIfTI write, ``hpcnn dataset import`` (one
worker: the header scan in the main process, the volume in the worker, as with --workers 1),
and hpcnn's pydicom reader (the path for transfer syntaxes GDCM lacks) on the same files. The
goal: the import holds the series once, as the baseline does (ratio to the baseline ~1). Above
the one volume the import holds the label: the RTSTRUCT's filled layers and the class map, a
byte per voxel each (a quarter of this int32 volume each); the baseline holds about as much in
GDCM's series listing (GetGDCMSeriesFileNames).

Run: python bench/dicom_import.py [--repeats 3] [--data /tmp/hpcnn-bench-dicom]
     python bench/dicom_import.py --memory 3000
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


MEMORY_CHILD = """
import sys
sys.path[:0] = {paths!r}
from pathlib import Path
import SimpleITK as sitk, pydicom, numpy
from hpcnn.dataset.importer import ImportOptions, import_dataset
from hpcnn.formats import dicom_series
from hpcnn.workspace import Workspace
data, out = Path({data!r}), Path({out!r})
files = sorted(p for p in data.iterdir() if p.name.startswith("IM"))
if {side!r} == "baseline":
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(data)))
    sitk.WriteImage(reader.Execute(), str(out / "image.nii.gz"), True)
elif {side!r} == "import":
    import_dataset(Workspace(out), ImportOptions(data.parent, "Memory", modality=("CT",),
                   test_fraction=0.0, workers=1, force=True))
elif {side!r} == "pydicom":
    scan = dicom_series.scan((f, f.name) for f in files)
    slices = dicom_series.ordered(next(iter(scan.series.values())))
    image = dicom_series._read_with_pydicom([s.path for s in slices])
status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
print(int(status.split()[0]) * 1024)  # this process's own peak (ru_maxrss keeps the parent's)
"""


def memory(slices: int, root: Path) -> None:
    """Peak RSS of each side above the bare interpreter with the same imports (see the
    module docstring)."""
    import subprocess

    data = root / f"tall-{slices}" / "case"
    done = data.parent / ".complete"
    if not done.exists():
        import shutil

        from hpcnn.services import demo_dicom_data as dd

        shutil.rmtree(data.parent, ignore_errors=True)
        series = dd.write_series(data, dd.volume((slices, 256, 256)), spacing=(0.7, 0.7, 0.5))
        dd.write_rtstruct(data / "rs.dcm", series, {"organ": {k: [dd.box_contour(90, 160, 80, 150)]
                                                              for k in range(10, 30)}})
        done.write_text("")
    volume = 256 * 256 * slices * 4  # int32: what GDCM gives this series (16-bit signed - 1024)
    peaks = {}
    with tempfile.TemporaryDirectory(dir=root) as out:
        for side in ("bare", "baseline", "import", "pydicom"):
            code = MEMORY_CHILD.format(paths=sys.path[:2] + [str(HERE.parent)],
                                       data=str(data), out=out, side=side)
            found = subprocess.run([sys.executable, "-c", code], check=True,
                                   capture_output=True, text=True)
            peaks[side] = int(found.stdout.split()[-1])
    bare = peaks.pop("bare")
    print(f"one 256x256x{slices} series, {volume / 2**20:.0f} MiB as SimpleITK holds it; "
          f"peak RSS above the bare interpreter ({bare / 2**20:.0f} MiB):")
    for side, peak in peaks.items():
        print(f"  {side:9} {(peak - bare) / 2**20:7.0f} MiB = {(peak - bare) / volume:.2f} volumes"
              f" ({(peak - bare) / max(1, peaks['baseline'] - bare):.2f}x the baseline)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir())
                        / "hpcnn-bench-dicom" / "series")
    parser.add_argument("--memory", type=int, metavar="SLICES",
                        help="measure peak memory on a series of SLICES 256x256 slices instead")
    args = parser.parse_args()
    if args.memory:
        args.data.parent.mkdir(parents=True, exist_ok=True)
        memory(args.memory, args.data.parent)
        return
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
