"""The GPU check: one fold of a small synthetic 3d_fullres dataset trained through hpcnn (the
local scheduler, the job script, the launcher) beside bare ``nnUNetv2_train`` on the same fold,
a walltime stop and its continuation, and a prediction; every figure into one folder.

On a GPU machine with PyTorch, no nnU-Net and no network (bench/gpu_wheels.py gathers the
rest here, into .gpu-wheels/, which travels with the working tree)::

    mkdir -p /tmp/w && tar -xJf .gpu-wheels/wheels.tar.xz -C /tmp/w &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl &&
    PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py --device cuda --out $OUT

Here, without a GPU, the same script end to end in a tiny mode (minutes on two cores)::

    python bench/gpu_check.py --device cpu --smoke

The default trainer on a GPU is nnU-Net's own ``nnUNetTrainer_5epochs`` (250 iterations an
epoch); ``--smoke`` uses hpcnn's ``hpcnnTinyTrainer`` (2 epochs of 3 iterations). The bare side
is nnU-Net's ``nnUNetv2_train`` entry point itself, run in a fresh Python, with only its trainer
lookup extended to hpcnn's trainer folder (as the launcher's), so both sides train the same class.

Figures (results.json and summary.txt in --out): epoch times of both sides; the launcher's
overhead, (hpcnn's job wall time - bare wall time) / bare wall time (goal <= 1%); the time one
walltime stop loses: the same fold trained in two attempts (the first sent SIGTERM, as a
scheduler does at the walltime, once its first epoch began; the second continuing from its
checkpoint) minus the uninterrupted job's wall time, and the seconds from the signal to the
exit; the GPU's peak memory (nvidia-smi, sampled every half second) or the peak memory of the
processes it started on a CPU; prediction time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASET = "GpuCheck"
BARE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("hpcnn_launcher", sys.argv[1])
launcher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launcher)
import nnunetv2.run.run_training as run_training
# nnU-Net's own entry point; only its trainer lookup also reads nnUNet_extTrainer (hpcnn's
# trainers), exactly as hpcnn's launcher looks trainers up.
run_training.recursive_find_trainer_class_by_name = launcher.find_trainer
sys.argv = ["nnUNetv2_train", *sys.argv[2:]]
run_training.run_training_entry()
"""


class GpuMemory:
    """The peak of nvidia-smi's memory.used over the run, sampled every half second."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True,
                                 text=True, check=False).stdout.split()
            if out and out[0].isdigit():
                self.peak_mib = max(self.peak_mib, int(out[0]))

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def cli(args: list[str]) -> None:
    from hpcnn.cli.common import run_cli
    from hpcnn.cli.main import cli as group

    code = run_cli(group, args)
    if code != 0:
        raise SystemExit(f"hpcnn {' '.join(args)} exited {code}")


def epoch_times(fold_folder: Path) -> list[float]:
    from hpcnn.nnunet.training_log import read_fold

    return [e.epoch_time for e in read_fold(fold_folder).epochs if e.epoch_time is not None]


def nnunet_env(work: Path, results: Path, cpus: int) -> dict[str, str]:
    from hpcnn.nnunet import trainer_dir

    return {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"),
            "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(results), "nnUNet_extTrainer": str(trainer_dir()),
            "nnUNet_n_proc_DA": str(cpus), "nnUNet_compile": "f"}


def timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
    start = time.monotonic()
    code = subprocess.run(argv, env=env, check=False).returncode
    if code not in ok:
        raise SystemExit(f"{' '.join(argv[:3])}... exited {code}")
    return time.monotonic() - start, code


def stopped_attempt(argv: list[str], env: dict[str, str],
                    fold_folder: Path) -> tuple[float, int, float]:
    """The launcher, sent SIGTERM (what a scheduler sends at the walltime) as soon as its first
    epoch began; (wall seconds, exit status: 75 continue me, or 0 when it had already
    finished, seconds from the signal to the exit)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env)
    signalled = None
    while proc.poll() is None:
        logs = list(fold_folder.glob("training_log_*.txt")) if fold_folder.is_dir() else []
        if signalled is None and any("Epoch 0" in p.read_text(errors="replace") for p in logs):
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
        time.sleep(0.2)
    end = time.monotonic()
    if proc.returncode not in (0, 75):
        raise SystemExit(f"the stopped launcher exited {proc.returncode}")
    return end - start, proc.returncode, end - (signalled or end)


def train_with_hpcnn(work: Path, config: Path, device: str) -> float:
    """The fold through hpcnn's local scheduler, job script and launcher; the job's wall time
    (its start and exit markers)."""
    from hpcnn.config import load_config_file
    from hpcnn.errors import EXIT_FAILED, EXIT_OK
    from hpcnn.services.session import Session
    from hpcnn.services.status import run_status

    cli(["--config", str(config), "train-all-folds", "--folds", "0"])
    cfg = load_config_file(config)
    while True:
        with Session(cfg) as session:
            status = run_status(session)
        if status.exit_code in (EXIT_OK, EXIT_FAILED):
            break
        time.sleep(1)
    fold = status.folds[0]
    if status.exit_code != EXIT_OK:
        raise SystemExit(f"the hpcnn fold ended {fold.view.state}: {fold.err_tail}")
    now = datetime.now(timezone.utc)
    return sum(a.seconds(now) for a in fold.attempts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny trainer and data (CPU proof)")
    parser.add_argument("--trainer", help="default: nnUNetTrainer_5epochs, or hpcnnTinyTrainer "
                                          "with --smoke")
    parser.add_argument("--cases", type=int, default=0, help="default 10, or 6 with --smoke")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu-check")
    args = parser.parse_args()
    trainer = args.trainer or ("hpcnnTinyTrainer" if args.smoke else "nnUNetTrainer_5epochs")
    cases = args.cases or (6 if args.smoke else 10)
    cpus = max(1, min(os.cpu_count() or 1, 12))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hpcnn-gpu-check-"))
    started = time.monotonic()
    results: dict[str, object] = {"device": args.device, "smoke": args.smoke, "trainer": trainer,
                                  "cases": cases, "date": datetime.now(timezone.utc).isoformat()}
    import torch

    results["torch"] = torch.__version__
    results["card"] = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    from importlib.metadata import version

    results["nnunetv2"] = version("nnunetv2")
    from hpcnn.nnunet import launcher_path
    from hpcnn.services.demo_data import write_exports

    config = work / "cluster.yaml"
    config.write_text(
        f"workspace: {work}\n"
        f"training: {{dataset: {DATASET}, trainer: {trainer}, device: {args.device}, "
        "max_resubmits: 0}\n"
        f"resources: {{cpus: {cpus}, gpus: {1 if args.device == 'cuda' else 0}}}\n"
        "local: {max_parallel: 1}\n")
    with GpuMemory() as gpu:
        write_exports(work / "exports", cases)
        write_exports(work / "test", 2, first_seed=1000)
        t = time.monotonic()
        cli(["--config", str(config), "dataset", "import", str(work / "exports"), "--name",
             DATASET, "--modality", "CT", "--test-fraction", "0"])
        cli(["--config", str(config), "preprocess", DATASET])
        results["import_preprocess_s"] = round(time.monotonic() - t, 2)
        folder = f"{trainer}__nnUNetPlans__3d_fullres"
        dataset = next(p.name for p in (work / "nnUNet_preprocessed").iterdir()
                       if p.name.endswith(DATASET))

        hpcnn_s = train_with_hpcnn(work, config, args.device)
        hpcnn_epochs = epoch_times(work / "nnUNet_results" / dataset / folder / "fold_0")

        bare_results = work / "bare_results"
        env = nnunet_env(work, bare_results, cpus)
        bare_s, _ = timed([sys.executable, "-c", BARE, str(launcher_path()), dataset,
                           "3d_fullres", "0", "-tr", trainer, "-device", args.device], env)
        bare_epochs = epoch_times(bare_results / dataset / folder / "fold_0")

        # A walltime stop: fold 1 through the launcher, stopped by the scheduler's signal
        # (SIGTERM) once its first epoch began, then its continuation, against the
        # uninterrupted fold.
        stop_results = work / "stop_results"
        env = nnunet_env(work, stop_results, cpus)
        launch = [sys.executable, str(launcher_path()), dataset, "3d_fullres", "1", "-tr",
                  trainer, "-device", args.device]
        first_s, first_code, after_signal_s = stopped_attempt(
            launch, env, stop_results / dataset / folder / "fold_1")
        second_s, _ = timed(launch, env)
        stopped_epochs = epoch_times(stop_results / dataset / folder / "fold_1")

        predictions = work / "predictions"
        t = time.monotonic()
        cli(["--config", str(config), "predict", str(work / "test"), str(predictions),
             "--folds", "0", "--device", args.device])
        results["predict_s"] = round(time.monotonic() - t, 2)
        results["predicted_files"] = len(list(predictions.glob("*.nrrd")))

    overhead = (hpcnn_s - bare_s) / bare_s
    results.update({
        "hpcnn_job_s": round(hpcnn_s, 2), "bare_nnUNetv2_train_s": round(bare_s, 2),
        "launcher_overhead_ratio": round(overhead, 4),
        "launcher_overhead_goal": "<= 0.01: " + ("PASS" if overhead <= 0.01 else "MISS"),
        "hpcnn_epoch_s": [round(e, 2) for e in hpcnn_epochs],
        "bare_epoch_s": [round(e, 2) for e in bare_epochs],
        "walltime_stop": {"first_attempt_exit": first_code, "first_attempt_s": round(first_s, 2),
                          "continuation_s": round(second_s, 2),
                          "lost_s": round(first_s + second_s - hpcnn_s, 2),
                          "signal_to_exit_s": round(after_signal_s, 2),
                          "epochs_in_both": len(stopped_epochs)},
        "gpu_peak_mib": gpu.peak_mib if args.device == "cuda" else None,
        "children_peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "total_s": round(time.monotonic() - started, 1),
    })
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"{k}: {v}" for k, v in results.items()]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
