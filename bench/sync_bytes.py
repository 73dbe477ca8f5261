"""``hpcnn sync``: the bytes it moves vs the bytes of the files prediction needs (goal <= 1.1x),
with the tutorial's whole-folder ``rsync -a`` of nnUNet_results and an ``rsync -a`` of exactly
the needed files reported beside it.

Run as root with the test bed up (tests/testbed/up.sh):
    python bench/sync_bytes.py [--repeats 3] [--checkpoint-mb 20] [--delay-ms 25]

The cluster holds a run of five completed folds as nnU-Net leaves them: per fold the final and
the best checkpoint (nnU-Net deletes checkpoint_latest.pth when a fold finishes), progress.png,
a training log of 1000 epochs, debug.json, validation/ with its segmentations, summary.json and
the ``--npz`` probabilities, and hpcnn's provenance; beside the folds plans.json, dataset.json
and dataset_fingerprint.json. Binary files are random bytes (nothing compresses). The folds are
completed in hpcnn's eyes as after a real training: their job folders hold the ``started`` and
``exit_code 0`` markers a job writes, and the scheduler has forgotten their ids.

Prediction needs plans.json, dataset.json and each fold's checkpoint_final.pth: their sizes are
the denominator. Bytes are counted on the wire (both directions, SSH framing and the status
round trip included) by the relay (bench/tcp_proxy.py) every command goes through; each sync
starts from an empty local nnUNet_results, with the run's jobs not yet seen as finished.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bed import HPCNN, LOOPBACK, BenchBed, Wire  # noqa: E402
from harness import goal, load_average  # noqa: E402

GOAL = 1.1
FOLDS = 5
EPOCHS = 1000
VALIDATION_CASES = 6
MB = 1 << 20
NEEDED = ("plans.json", "dataset.json", *(f"fold_{f}/checkpoint_final.pth" for f in range(FOLDS)))
"""What nnU-Net's predictor reads from a model folder (five folds)."""


def training_log(fold: int) -> str:
    """nnU-Net's training log of a finished fold: one block per epoch, as nnU-Net writes it."""
    lines = [f"2025-05-01 12:00:00.000000: fold {fold}, 3d_fullres, {EPOCHS} epochs\n"]
    for epoch in range(EPOCHS):
        stamp = f"2025-05-0{1 + epoch // 480} {epoch % 24:02d}:{epoch % 60:02d}:30.123456: "
        block = ["", f"Epoch {epoch}", "Current learning rate: 0.00536",
                 f"train_loss -0.{8000 + epoch}", f"val_loss -0.{7000 + epoch}",
                 f"Pseudo dice [np.float32(0.{9100 + epoch % 800}), np.float32(0.8{epoch % 97})]",
                 "Epoch time: 121.37 s"]
        lines += [f"{stamp}{line} \n" for line in block]
    return "".join(lines)


def model_files(checkpoint_mb: int) -> dict[str, int | str]:
    """The run's results folder: {relative path: size of random bytes, or text}."""
    files: dict[str, int | str] = {"plans.json": 15_000, "dataset.json": 2_000,
                                   "dataset_fingerprint.json": 60_000}
    for f in range(FOLDS):
        fold = f"fold_{f}"
        files |= {f"{fold}/checkpoint_final.pth": checkpoint_mb * MB,
                  f"{fold}/checkpoint_best.pth": checkpoint_mb * MB,
                  f"{fold}/progress.png": 300_000,
                  f"{fold}/training_log_2025_5_1_12_00_00.txt": training_log(f),
                  f"{fold}/debug.json": 20_000,
                  f"{fold}/validation/summary.json": 30_000,
                  f"{fold}/hpcnn_provenance.json": 1_000}
        for case in range(VALIDATION_CASES):
            name = f"{fold}/validation/case_{f * VALIDATION_CASES + case:03d}"
            files |= {f"{name}.nii.gz": 400_000, f"{name}.npz": 3 * MB, f"{name}.pkl": 2_000}
    return files


def size(content: int | str) -> int:
    return content if isinstance(content, int) else len(content.encode())


def build_remote(bed: BenchBed, root: str, results: str, job_dirs: list[str],
                 files: dict[str, int | str]) -> None:
    """Write the run's results and its jobs' markers on the cluster in one command: text in a
    tar on stdin, random bytes made there."""
    archive = io.BytesIO()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    texts = {f"{results}/{rel}": text for rel, text in files.items() if isinstance(text, str)}
    for job_dir in job_dirs:
        rel = os.path.relpath(job_dir, root)
        texts[f"{rel}/started"] = f"host=vm\ntime={now}\njobid=0\nwalltime=3600\npid=1\n"
        texts[f"{rel}/exit_code"] = f"0\nphase=run\nsignal=\ntime={now}\n"
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, text in texts.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    made = [f"mkdir -p {shlex.quote(f'{results}/{rel}'.rsplit('/', 1)[0])} && "
            f"head -c {n} /dev/urandom > {shlex.quote(f'{results}/{rel}')}"
            for rel, n in files.items() if isinstance(n, int)]
    line = f"cd {shlex.quote(root)} && tar -xf - && " + " && ".join(made)
    subprocess.run([*bed.ssh(LOOPBACK), line], input=archive.getvalue(), check=True)


def measured(bed: BenchBed, argv: list[str], ok: tuple[int, ...] = (0,)) -> tuple[Wire, float]:
    start = time.perf_counter()
    wire = bed.wire(argv, ok)
    return wire, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint-mb", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=25.0)
    args = parser.parse_args()
    files = model_files(args.checkpoint_mb)
    needed = sum(size(files[rel]) for rel in NEEDED)
    total = sum(size(c) for c in files.values())
    with BenchBed("sync", delay_ms=args.delay_ms) as bed:
        with bed.session(LOOPBACK) as session:
            run = bed.record_run(session, "Dataset903_SyncBench", FOLDS, submit=False)
            jobs = session.registry.jobs(run.id)
            root = session.remote.root
            results = session.remote.path("nnUNet_results", run.results_folder)
            build_remote(bed, root, os.path.relpath(results, root), [j.job_dir for j in jobs],
                         files)
        local = bed.ws / "nnUNet_results"
        copy = bed.work / "rsync"
        ssh_e = " ".join(shlex.quote(a) for a in bed.ssh(bed.relayed)[:-1])
        rsync_all = ["rsync", "-a", "-e", ssh_e, f"testbed:{root}/nnUNet_results/", f"{copy}/"]
        rsync_needed = ["rsync", "-a", "-e", ssh_e, "--files-from", str(bed.work / "needed"),
                        f"testbed:{results}/", f"{copy}/"]
        (bed.work / "needed").write_text("".join(f"{rel}\n" for rel in NEEDED))
        figures: dict[str, list[tuple[Wire, float]]] = {}
        quiet: dict[str, Wire] = {}
        for _ in range(args.repeats):
            for ssh in ("openssh", "fabric"):
                bed.use(ssh)
                with bed.session(LOOPBACK) as session:  # the jobs' end not yet seen
                    session.registry.update_many([(j.name, {"state": "queued"}) for j in jobs])
                shutil.rmtree(local, ignore_errors=True)
                figures.setdefault(f"hpcnn sync ({ssh})", []).append(
                    measured(bed, [HPCNN, "sync", "--run", run.id]))
                check_pulled(local / run.results_folder, files)
                quiet[ssh] = bed.wire([HPCNN, "sync", "--run", run.id])
            for name, argv in (("rsync -a of nnUNet_results (the tutorial)", rsync_all),
                               ("rsync -a of the needed files", rsync_needed)):
                shutil.rmtree(copy, ignore_errors=True)
                figures.setdefault(name, []).append(measured(bed, argv))
        print(f"a run of {FOLDS} completed folds: {len(files)} files, {total / 1e6:.1f} MB on "
              f"the cluster; prediction needs {len(NEEDED)} of them, {needed / 1e6:.1f} MB. "
              f"Medians of {args.repeats} runs through a {args.delay_ms:g} ms link; "
              f"{load_average()}")
        for name, runs in figures.items():
            moved = statistics.median(w.up + w.down for w, _ in runs)
            seconds = statistics.median(s for _, s in runs)
            verdict = (f" (goal {goal(moved / needed, GOAL)})"
                       if name.startswith("hpcnn") else "")
            print(f"{name}: {moved / 1e6:.2f} MB on the wire = {moved / needed:.3f}x the "
                  f"needed files{verdict}; {seconds:.1f} s; {runs[-1][0]}")
        for ssh, wire in quiet.items():
            print(f"a second hpcnn sync ({ssh}), nothing new: {wire}")
        print(load_average())


def check_pulled(local: Path, files: dict[str, int | str]) -> None:
    """The sync brought every needed file, whole."""
    for rel in NEEDED:
        assert (local / rel).stat().st_size == size(files[rel]), rel


if __name__ == "__main__":
    main()
