"""``hpcnn predict`` vs bare ``nnUNetv2_predict_from_modelfolder`` on the same input and folds.

Goal (issue 11): hpcnn's overhead (finding and checking the inputs and the model, the work
folder, renaming the results, its own start-up) is at most 5% + 1 s of nnU-Net's own run.

Model: the tiny two-fold model of the tests (tests/models.py: 6 cases of 32^3, folds 0 and 1),
built once into --data and reused. Input: --cases CT-like volumes of --size^3 voxels in the
model's format (.nrrd) and nnU-Net's naming (``case_NNN_0000.nrrd``), the same folder for both.
Both sides run as the user runs them, as commands: the CPU, both folds, no test-time
augmentation, the same numbers of preprocessing and export processes (hpcnn's choice, passed to
nnU-Net as -npp/-nps), ``nnUNet_extTrainer`` pointing at hpcnn's trainers for nnU-Net (hpcnn sets
it itself). Runs are interleaved and the medians compared (harness.compare).

Run: python bench/predict_overhead.py [--repeats 3] [--cases 4] [--size 64]
     [--data /tmp/hpcnn-bench-predict]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from harness import compare, time_command  # noqa: E402


def model_folder(data: Path) -> Path:
    """The tiny model under ``data``, trained on first use (a few minutes on 2 cores)."""
    from models import DATASET, MODEL, build_tiny_model

    model = data / "nnUNet_results" / DATASET / MODEL
    if not all((model / f"fold_{f}" / "checkpoint_final.pth").is_file() for f in (0, 1)):
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        print(f"training the tiny model into {data} (once)...", flush=True)
        build_tiny_model(data)
    return model


def make_input(folder: Path, cases: int, size: int) -> Path:
    import numpy as np
    from synthetic import Grid, ct_image, sphere, write_image

    if folder.is_dir() and len(list(folder.glob("*_0000.nrrd"))) == cases:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    grid = Grid((size, size, size))
    for i in range(cases):
        centre = [size / 2 + rng.integers(-3, 4) for _ in range(3)]
        masks = {"liver": sphere(grid, centre, size * 0.35), "tumor": sphere(grid, centre,
                                                                             size * 0.23)}
        write_image(folder / f"case_{i:03d}_0000.nrrd", ct_image(grid, masks, rng), grid)
    return folder


def main() -> None:
    from hpcnn.dataset.workers import available_cpus
    from hpcnn.nnunet import trainer_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--data", type=Path,
                        default=Path(tempfile.gettempdir()) / "hpcnn-bench-predict")
    args = parser.parse_args()
    model = model_folder(args.data / "model")
    images = make_input(args.data / f"input-{args.cases}x{args.size}", args.cases, args.size)
    processes = str(max(1, min(3, available_cpus(), args.cases)))  # what hpcnn predict picks
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "nnUNet_extTrainer": str(trainer_dir()),
           "nnUNet_compile": "f"}
    out = args.data / "out"

    def bare() -> float:
        shutil.rmtree(out, ignore_errors=True)
        return time_command([str(bin_dir / "nnUNetv2_predict_from_modelfolder"), "-i",
                             str(images), "-o", str(out), "-m", str(model), "-f", "0", "1",
                             "-device", "cpu", "--disable_tta", "-npp", processes, "-nps",
                             processes, "--disable_progress_bar"], env=env)

    def hpcnn() -> float:
        shutil.rmtree(out, ignore_errors=True)
        return time_command([str(bin_dir / "hpcnn"), "predict", str(images), str(out),
                             "--model", str(model), "--folds", "0,1", "--device", "cpu",
                             "--fast"], env=env)

    print(f"{args.cases} case(s) of {args.size}^3 (.nrrd), 2 folds, CPU, no TTA, "
          f"{processes} process(es)")
    b, c, ratio = compare(bare, hpcnn, repeats=args.repeats, warmup=1)
    goal = 1.05 * b + 1.0
    print(f"hpcnn predict: {c:.2f} s vs nnUNetv2_predict_from_modelfolder: {b:.2f} s -> ratio "
          f"{ratio:.3f}x, overhead {c - b:+.2f} s (goal <= 5% + 1 s: {goal:.2f} s; "
          f"{'met' if c <= goal else 'NOT met'})")


if __name__ == "__main__":
    main()
