"""``hpcnn dataset check`` vs nnU-Net's own ``verify_dataset_integrity``: time and findings.

Goals (issue 4): the check at least 2x as fast with the same number of workers, and finding a
superset of what nnU-Net finds.

Data: a fixed generated dataset (tests/synthetic.py ``write_nnunet_dataset``, seed 0) of 40 cases
of 128x128x64 int16 CT-like volumes with two-label maps, .nii.gz, written once to --data and
reused. Timing runs on the clean dataset, where both sides do their full pass; both are called in
this process with the same worker count (each starts its own process pool per call, as a user's
run would) and SimpleITK pinned to one thread per process (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS).
Findings are compared on a copy seeded with problems: nnU-Net's printed errors and warnings are
parsed and each one must appear among the check's problems (same code, same file).

Run: python bench/check_speed.py [--repeats 3] [--workers 2] [--data /tmp/hpcnn-bench-check]
"""

from __future__ import annotations

import os

os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"  # before SimpleITK loads, here and in
# every worker either side starts

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from harness import compare, report, time_call  # noqa: E402

CASES, SIZE, ENDING = 40, (128, 128, 64), ".nii.gz"
NAME = "Dataset900_CheckBench"


def make_data(root: Path) -> Path:
    """The fixed clean dataset, generated once (a marker file says it is complete)."""
    folder = root / "clean" / NAME
    done = folder.parent / ".complete"
    if not done.exists():
        import synthetic

        shutil.rmtree(folder, ignore_errors=True)
        synthetic.write_nnunet_dataset(folder, n_cases=CASES, size=SIZE, file_ending=ENDING)
        done.write_text("")
    return folder


def seed_problems(clean: Path, root: Path) -> Path:
    """A copy of the clean dataset with problems nnU-Net finds and problems only hpcnn finds."""
    import SimpleITK as sitk

    folder = root / "seeded" / NAME
    shutil.rmtree(folder.parent, ignore_errors=True)
    shutil.copytree(clean, folder)

    def path(sub: str, case: int, channel: bool = False) -> str:
        return str(folder / sub / f"case_{case:03d}{'_0000' if channel else ''}{ENDING}")

    def rewrite(file: str, change) -> None:
        image = sitk.ReadImage(file)
        sitk.WriteImage(change(image), file, True)

    def shifted(image: sitk.Image) -> sitk.Image:
        image.SetOrigin(tuple(o + 3.0 for o in image.GetOrigin()))
        return image

    def respaced(image: sitk.Image) -> sitk.Image:
        image.SetSpacing((1.0, 1.0, 1.2))
        return image

    def flipped(image: sitk.Image) -> sitk.Image:
        image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
        return image

    # No NaN seed: ITK's NIfTI reader turns NaN into 0, for nnU-Net's SimpleITKIO as for us.
    rewrite(path("labelsTr", 3), flipped)                               # both: direction
    rewrite(path("labelsTr", 5), lambda im: im[:120, :, :])             # both: shape
    rewrite(path("labelsTr", 7), respaced)                              # both: spacing
    rewrite(path("labelsTr", 9), shifted)                               # both: origin (warning)
    rewrite(path("labelsTr", 11), lambda im: im * 0)                    # hpcnn: empty label
    shutil.copy(path("imagesTr", 12, True), path("imagesTr", 13, True))  # hpcnn: duplicate
    rewrite(path("labelsTr", 15), lambda im: sitk.Cast(im, sitk.sitkFloat32))  # hpcnn: float
    for sub, channel in (("imagesTr", True), ("labelsTr", False)):      # hpcnn: orientation
        rewrite(path(sub, 17, channel), flipped)
    (folder / "imagesTr" / "notes.txt").write_text("exported by hand\n")  # hpcnn: stray file
    shutil.copy(path("labelsTr", 0), folder / "labelsTr" / f"case_099{ENDING}")  # hpcnn: orphan
    meta = json.loads((folder / "dataset.json").read_text())
    meta["modality"] = {"0": "CT"}                                      # hpcnn: v1 key
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence stdout at the file-descriptor level (nnU-Net's workers print too)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_nnunet(folder: Path, workers: int) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    with quiet():
        verify_dataset_integrity(str(folder), workers)


def run_hpcnn(folder: Path, workers: int) -> None:
    from hpcnn.dataset.check import check_dataset

    check_dataset(folder, workers=workers)


# nnU-Net's messages (verify_dataset_integrity.py) → the check's code; the file is the segmentation
# ("Seg file:") or the image list ("Images:") the message names.
NNUNET_MESSAGES = [
    (re.compile(r"Error: Unexpected labels found in file (\S+)"), "undeclared-label"),
    (re.compile(r"Images contain NaN pixel values.*?Images:\n\[?'([^']+)'", re.S), "nan-in-image"),
    (re.compile(r"Segmentation contains NaN.*?Segmentation:\n(\S+)", re.S), "nan-in-label"),
    (re.compile(r"Error: Shape mismatch.*?Seg file: (\S+)", re.S), "shape-mismatch"),
    (re.compile(r"Error: Spacing mismatch.*?Seg file: (\S+)", re.S), "spacing-mismatch"),
    (re.compile(r"Warning: Origin mismatch.*?Seg file: (\S+)", re.S), "origin-mismatch"),
    (re.compile(r"Warning: Direction mismatch.*?Seg file: (\S+)", re.S), "direction-mismatch"),
    (re.compile(r"Error: Unexpected number of modalities.*?Images: \['([^']+)'", re.S),
     "missing-channel"),
]
_MESSAGE_START = re.compile(r"^(Error|Warning|WARNING|ERROR|Images contain NaN|Segmentation "
                            r"contains NaN)", re.M)


def nnunet_findings(folder: Path, workers: int) -> list[tuple[str, str]]:
    """(code, file relative to the dataset) for every problem nnU-Net printed."""
    code = ("from nnunetv2.experiment_planning.verify_dataset_integrity import "
            f"verify_dataset_integrity\nverify_dataset_integrity({str(folder)!r}, {workers})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    text = out.stdout + out.stderr
    starts = [m.start() for m in _MESSAGE_START.finditer(text)] + [len(text)]
    found = []
    for begin, end in zip(starts, starts[1:], strict=False):
        chunk = text[begin:end]
        for pattern, problem_code in NNUNET_MESSAGES:
            m = pattern.search(chunk)
            if m:
                found.append((problem_code, str(Path(m.group(1).rstrip(".',]")).relative_to(
                    folder))))
                break
        else:
            found.append(("unparsed", chunk.splitlines()[0]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "hpcnn-bench-check")
    args = parser.parse_args()
    clean = make_data(args.data)
    print(f"{CASES} cases of {'x'.join(map(str, SIZE))} ({ENDING}) in {clean}, "
          f"{args.workers} worker(s) on both sides")
    b, c, ratio = compare(lambda: time_call(lambda: run_nnunet(clean, args.workers)),
                          lambda: time_call(lambda: run_hpcnn(clean, args.workers)),
                          repeats=args.repeats, warmup=1)
    report("hpcnn dataset check", "nnU-Net verify_dataset_integrity", b, c, ratio)
    print(f"  speed-up {1 / ratio:.2f}x (goal >= 2x)")

    from hpcnn.dataset.check import check_dataset

    seeded = seed_problems(clean, args.data)
    theirs = nnunet_findings(seeded, args.workers)
    ours = check_dataset(seeded, workers=args.workers)
    mine = {(p.code, p.file) for p in ours.problems}
    missed = [f for f in theirs if f not in mine]
    print(f"seeded dataset: nnU-Net reported {len(theirs)} problem(s), hpcnn "
          f"{len(ours.problems)} ({len(ours.errors)} errors, {len(ours.warnings)} warnings)")
    for code, file in theirs:
        print(f"  nnU-Net: {code} {file}")
    for p in ours.sorted():
        print(f"  hpcnn:   {p.code} {p.file}")
    print("superset: yes" if not missed else f"superset: NO, missed {missed}")


if __name__ == "__main__":
    main()
