"""``hpcnn dataset import`` throughput vs plain SimpleITK read + write of the same files.

Goals (issue 4): import / baseline <= 1.25x with the same number of workers, and import with 2
workers >= 1.7x as fast as with 1.

Data: a fixed generated dataset (tests/synthetic.py, seed 0) of 40 cases of 128x128x64 int16
CT-like volumes (.nrrd, gzip) with Slicer .seg.nrrd segmentations (three segments, cropped to
their extent, 4-D with overlapping layers in most cases), written once to --data and reused.

Both sides run the same way: in this process for one worker, else in the import's process pool
(``hpcnn.dataset.workers.process_pool``: forked on Linux; its start counts on both sides), with
SimpleITK pinned to one thread per worker
(``sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)``) and gzip-compressed output. The
baseline reads and writes every image and segmentation once (``sitk.ReadImage`` +
``sitk.WriteImage``); the import reads every header, then every file, builds the class maps,
places them on the image grid, writes labels and copies (``--format nrrd``) or converts
(``--format nii.gz``) the images, and writes dataset.json and cases.csv. Runs are interleaved
(harness.compare) and the medians compared.

Run: python bench/import_throughput.py [--repeats 3] [--data /tmp/hpcnn-bench-import]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from harness import compare, goal, load_average, report, time_call  # noqa: E402

CASES, SIZE = 40, (128, 128, 64)
PRIORITY = ("tumor", "liver", "vessel")


def make_data(folder: Path) -> Path:
    """The fixed dataset, generated once (a marker file says it is complete)."""
    done = folder / ".complete"
    if not done.exists():
        import synthetic

        shutil.rmtree(folder, ignore_errors=True)
        synthetic.slicer_export(folder, keys=[f"case {i:03d}" for i in range(CASES)], size=SIZE,
                                spacing=(0.8, 0.8, 2.5))
        done.write_text("")
    return folder


def _copy_pair(job: tuple[str, str, str, str, str]) -> None:
    import SimpleITK as sitk

    image, seg, out_dir, case, ending = job
    sitk.WriteImage(sitk.ReadImage(image), f"{out_dir}/{case}_0000{ending}", True)
    sitk.WriteImage(sitk.ReadImage(seg), f"{out_dir}/{case}{ending}", True)


def baseline(data: Path, workers: int, ending: str) -> None:
    """Plain SimpleITK: read and write every image and segmentation, run like the import: in
    this process for one worker, else in the import's own kind of pool."""
    from hpcnn.dataset.workers import pin_simpleitk_threads, process_pool

    images = sorted(p for p in data.glob("*.nrrd") if not p.name.endswith(".seg.nrrd"))
    with tempfile.TemporaryDirectory(dir=data.parent) as out:
        jobs = [(str(p), str(p.with_name(p.name[:-5] + ".seg.nrrd")), out, f"c{i:03d}", ending)
                for i, p in enumerate(images)]
        if workers == 1:
            pin_simpleitk_threads()
            for job in jobs:
                _copy_pair(job)
            return
        with process_pool(workers) as pool:
            list(pool.map(_copy_pair, jobs))


def run_import(data: Path, workers: int, file_format: str) -> None:
    from hpcnn.dataset.importer import ImportOptions, import_dataset
    from hpcnn.workspace import Workspace

    with tempfile.TemporaryDirectory(dir=data.parent) as ws:
        import_dataset(Workspace(Path(ws)), ImportOptions(
            data, "Bench", overlap=PRIORITY, modality=("CT",), test_fraction=0.0,
            workers=workers, file_format=file_format))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", dest="formats", action="append", choices=["nrrd", "nii.gz"],
                        help="only this output format (repeatable; default both)")
    parser.add_argument("--workers", type=int, action="append", choices=[1, 2],
                        help="only this many workers (repeatable; default 1 and 2)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir())
                        / "hpcnn-bench-import" / "exports")
    args = parser.parse_args()
    data = make_data(args.data)
    print(f"{CASES} cases of {'x'.join(map(str, SIZE))} (.nrrd + .seg.nrrd) in {data}; "
          f"{load_average()}")

    imports: dict[tuple[str, int], float] = {}
    for fmt, ending in (("nrrd", ".nrrd"), ("nii.gz", ".nii.gz")):
        if args.formats and fmt not in args.formats:
            continue
        for workers in args.workers or (1, 2):
            b, c, ratio = compare(
                lambda w=workers, e=ending: time_call(lambda: baseline(data, w, e)),
                lambda w=workers, f=fmt: time_call(lambda: run_import(data, w, f)),
                repeats=args.repeats, warmup=1)
            imports[fmt, workers] = c
            report(f"import --format {fmt}, {workers} worker(s)",
                   f"SimpleITK read+write {ending}", b, c, ratio, goal=goal(ratio, 1.25))
        if (fmt, 1) not in imports or (fmt, 2) not in imports:
            continue
        speedup = imports[fmt, 1] / imports[fmt, 2]
        print(f"import --format {fmt}: 1 -> 2 workers speed-up {speedup:.2f}x (goal >= 1.7x)")


if __name__ == "__main__":
    main()
