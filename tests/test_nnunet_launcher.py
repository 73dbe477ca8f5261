"""The in-job launcher (hpcnn/nnunet/launcher.py) with real nnunetv2 on CPU.

Walltime behaviour end to end: a deadline that falls during training and a SIGTERM sent to the
whole process group (as Slurm does at the time limit) each stop the fold at an epoch end with exit
75, a fresh ``checkpoint_latest.pth`` and no ``checkpoint_final.pth``; the next attempt resumes at
the next epoch (no epoch in two training logs) and ends with a final checkpoint of ``num_epochs``
epochs; an attempt on a complete fold exits 0 at once. The folds train on the preprocessed data of
the session's tiny model (tests/models.py) into their own ``nnUNet_results``; about 45 s per test
on 2 cores. The lookup and stop rules are tested on their own in fractions of a second.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from hpcnn.nnunet import (
    DEMO_TRAINER,
    EPOCHS_VARIABLE,
    TINY_TRAINER,
    launcher_path,
    trainer_dir,
    trainer_files,
)
from hpcnn.nnunet import launcher as launcher_module
from hpcnn.nnunet.launcher import (
    EXIT_CONTINUE,
    INFERENCE,
    INFERENCE_KEYS,
    Stopper,
    StopRequest,
    validation_is_done,
)
from hpcnn.nnunet.training_log import parse_text, read_fold

pytest_plugins = ("models",)

MODEL_FOLDER = "hpcnnTinyTrainer__nnUNetPlans__3d_fullres"


# ---- rules, without nnU-Net -------------------------------------------------------------------


def test_stops_when_the_next_epoch_might_not_fit_before_the_deadline() -> None:
    stopper = Stopper(deadline=1000.0, safety=10.0)
    assert stopper.after_epoch(epoch_seconds=50.0, now=900.0) is None, "900+50+10 < 1000"
    assert stopper.after_epoch(epoch_seconds=20.0, now=945.0) == "deadline", (
        "the longest epoch so far (50 s) counts, not the last one")
    assert stopper.before_validation(now=985.0) is None
    assert stopper.before_validation(now=991.0) == "deadline"
    assert Stopper(None, 10.0).after_epoch(1e9, now=1e12) is None, "no deadline: never"


def test_a_signal_waits_for_the_epoch_end_inside_epochs_and_stops_at_once_outside() -> None:
    stopper = Stopper(deadline=None, safety=0.0)
    stopper.interruptible = False
    stopper.on_signal(signal.SIGTERM, None)  # inside an epoch: recorded only
    assert stopper.after_epoch(1.0, now=0.0) == "signal SIGTERM"
    stopper = Stopper(deadline=None, safety=0.0)
    with pytest.raises(StopRequest):
        stopper.on_signal(signal.SIGUSR1, None)
    assert stopper.before_validation(now=0.0) == "signal SIGUSR1"


def test_a_fold_is_complete_only_with_a_readable_validation_newer_than_the_final(
        tmp_path: Path) -> None:
    final, summary = tmp_path / "checkpoint_final.pth", tmp_path / "validation" / "summary.json"
    summary.parent.mkdir()
    final.write_bytes(b"x")
    assert not validation_is_done(tmp_path, npz=False)
    summary.write_text(json.dumps({"foreground_mean": {"Dice": 0.9}}))
    os.utime(final, (time.time() + 5, time.time() + 5))
    assert not validation_is_done(tmp_path, npz=False), "older than the final checkpoint"
    os.utime(final, (time.time() - 5, time.time() - 5))
    assert validation_is_done(tmp_path, npz=False)
    assert not validation_is_done(tmp_path, npz=True), "--npz wants the probabilities"
    (summary.parent / "case_000.npz").write_bytes(b"x")
    assert validation_is_done(tmp_path, npz=True)
    summary.write_text('{"foreground_mean": {"Di')  # a validation killed while writing
    assert not validation_is_done(tmp_path, npz=False)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", [launcher_path(), *trainer_files()], ids=lambda p: p.name)
def test_cluster_side_files_import_only_stdlib_and_nnunet(path: Path) -> None:
    """They run where hpcnn is not installed."""
    # numpy: a dependency of nnunetv2 (the launcher names its scalar types, which nnU-Net's
    # checkpoints hold, to load them weights-only)
    foreign = _imports(path) - set(sys.stdlib_module_names) - {"__future__", "nnunetv2", "torch",
                                                                "numpy"}
    assert not foreign, f"{path.name} imports {foreign}"
    assert trainer_files() and all(p.parent == trainer_dir() for p in trainer_files())
    assert {p.name for p in trainer_dir().iterdir()} <= {p.name for p in trainer_files()} | {
        "__pycache__"}, "nnU-Net imports every module of the trainer directory"


def test_finds_the_trainer_in_nnunet_exttrainer_first(tmp_path: Path,
                                                      nnunet_available: None) -> None:
    """nnU-Net's own lookup imports all of its trainer modules (and dies on a broken optional
    package); the launcher imports only the external directories, skipping a broken module."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "aaa_broken.py").write_text("import a_package_that_is_not_installed\n")
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import launcher; "
              f"cls = launcher.find_trainer({TINY_TRAINER!r}); "
              "print(cls.__name__, any(m.startswith('nnunetv2.training.nnUNetTrainer.variants') "
              "for m in sys.modules))")
    env = {**os.environ, "nnUNet_extTrainer": f"{broken}{os.pathsep}{trainer_dir()}"}
    done = subprocess.run([sys.executable, "-c", script, str(launcher_path().parent)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [TINY_TRAINER, "False"], "no nnU-Net trainer module imported"
    assert "aaa_broken.py" in done.stderr and "a_package_that_is_not_installed" in done.stderr


# ---- real training ---------------------------------------------------------------------------


def test_the_packaged_trainers_and_their_epoch_override(tiny_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("hpcnn_trainers_under_test", trainer_files()[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    preprocessed = tiny_model.parents[2] / "nnUNet_preprocessed" / tiny_model.parent.name
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.delenv(EPOCHS_VARIABLE, raising=False)

    def make(name: str):
        plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
        plans["continue_training"] = False
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        return getattr(module, name)(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))

    tiny, demo = make(TINY_TRAINER), make(DEMO_TRAINER)
    assert (tiny.num_epochs, tiny.num_iterations_per_epoch, tiny.save_every) == (2, 3, 1)
    assert demo.num_epochs * demo.num_iterations_per_epoch >= 40, "enough steps to learn"
    assert tiny.my_init_kwargs["configuration"] == "3d_fullres", "checkpoints can rebuild it"
    monkeypatch.setenv(EPOCHS_VARIABLE, "7")
    assert make(TINY_TRAINER).num_epochs == make(DEMO_TRAINER).num_epochs == 7
    monkeypatch.setenv(EPOCHS_VARIABLE, "0")
    with pytest.raises(ValueError, match=EPOCHS_VARIABLE):
        make(TINY_TRAINER)
    monkeypatch.setenv(EPOCHS_VARIABLE, "2")
    assert make(TINY_TRAINER).min_epoch_seconds == 0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(module.EPOCH_SECONDS_VARIABLE, bad)
        with pytest.raises(ValueError, match=module.EPOCH_SECONDS_VARIABLE):
            make(TINY_TRAINER)



@pytest.fixture
def fold_env(tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    """The tiny model's preprocessed dataset, a fresh nnUNet_results, one data-loader worker."""
    from models import nnunet_env

    env = nnunet_env(tiny_model.parents[2])
    env.update(nnUNet_results=str(tmp_path / "results"), nnUNet_n_proc_DA="1")
    env.pop("HPCNN_TINY_EPOCHS", None)
    return env


def _command(fold: int, *extra: str) -> list[str]:
    return [sys.executable, str(launcher_path()), "501", "3d_fullres", str(fold), "-tr",
            TINY_TRAINER, "-device", "cpu", *extra]


def _launch(env: dict[str, str], fold: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(fold, *extra), env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _epoch(checkpoint: Path) -> int:
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"]


def _trained_epochs(folder: Path) -> list[list[int]]:
    """The finished epochs of each training log, in the order the attempts ran."""
    logs = [parse_text(p.read_text(), p.name) for p in folder.glob("training_log_*.txt")]
    logs.sort(key=lambda log: log.epochs[0].started if log.epochs else datetime.min)
    return [[e.epoch for e in log.epochs if e.finished] for log in logs]


def _assert_stopped_for_continuation(done: subprocess.CompletedProcess[str], fold: Path,
                                     epochs_done: int) -> None:
    assert done.returncode == EXIT_CONTINUE, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (fold / "checkpoint_final.pth").exists(), "a partial model is no final one"
    assert _epoch(fold / "checkpoint_latest.pth") == epochs_done, "latest = the last epoch end"
    assert not list(fold.glob("*.hpcnn-tmp")), "checkpoints are renamed into place"


def _assert_completed(done: subprocess.CompletedProcess[str], fold: Path, epochs: int) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert _epoch(fold / "checkpoint_final.pth") == epochs
    assert not (fold / "checkpoint_latest.pth").exists()
    assert validation_is_done(fold, npz=False)
    # The inference checkpoint beside it: the final one's weights and what prediction reads.
    import torch

    slim = torch.load(fold / INFERENCE, map_location="cpu", weights_only=True)
    full = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert sorted(slim) == sorted(INFERENCE_KEYS) and slim["current_epoch"] == epochs
    assert all(torch.equal(v, full["network_weights"][k])
               for k, v in slim["network_weights"].items())
    merged = read_fold(fold)
    assert merged.repeated == [], "no epoch trained twice"
    assert [e.epoch for e in merged.epochs] == list(range(epochs))


def test_deadline_stops_at_an_epoch_end_and_the_continuation_resumes(
        fold_env: dict[str, str]) -> None:
    fold_env["HPCNN_TINY_EPOCHS"] = "3"
    fold_env["HPCNN_TINY_EPOCH_SECONDS"] = "2"  # the walltime tests' floor, in nnU-Net's log
    fold = Path(fold_env["nnUNet_results"], "Dataset501_Tiny", MODEL_FOLDER, "fold_0")

    # The deadline is past before the first epoch ends: an attempt still trains one epoch.
    first = _launch(fold_env, 0, "--deadline", str(time.time() + 1), "--safety", "0")
    _assert_stopped_for_continuation(first, fold, epochs_done=1)
    assert "Cannot continue training" not in first.stdout  # a first attempt: no --c, no warning
    assert "stopping after epoch 0 (deadline)" in (fold / next(
        p.name for p in fold.glob("training_log_*.txt"))).read_text()

    second = _launch(fold_env, 0, "--c", "--deadline", str(time.time() + 3600))
    _assert_completed(second, fold, epochs=3)
    assert _trained_epochs(fold) == [[0], [1, 2]]
    assert all(e.epoch_time >= 2 for e in read_fold(fold).epochs), read_fold(fold).epochs

    started = time.monotonic()
    third = _launch(fold_env, 0)
    assert third.returncode == 0 and "complete; nothing to do" in third.stdout
    assert time.monotonic() - started < 20, "a complete fold does not load torch or train"
    assert len(list(fold.glob("training_log_*.txt"))) == 2

    provenance = json.loads((fold / "hpcnn_provenance.json").read_text())
    attempts = provenance["attempts"]
    assert [a["exit_code"] for a in attempts] == [EXIT_CONTINUE, 0, 0]
    assert [a.get("start_epoch") for a in attempts[:2]] == [0, 1]
    assert attempts[0]["stopped"] == "deadline" and attempts[2]["outcome"] == "already complete"
    assert provenance["nnunetv2_version"] and all(a["ended"] for a in attempts)


def test_sigterm_to_the_job_stops_at_the_epoch_end_and_the_continuation_resumes(
        fold_env: dict[str, str]) -> None:
    """SIGTERM to the whole process group, data-loader workers included, as at a time limit."""
    fold = Path(fold_env["nnUNet_results"], "Dataset501_Tiny", MODEL_FOLDER, "fold_1")
    process = subprocess.Popen(_command(1), env=fold_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any("Epoch 0" in p.read_text() for p in fold.glob("training_log_*.txt")):
            assert process.poll() is None and time.monotonic() < deadline, "no epoch started"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)  # during epoch 0 of 2
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stopped = subprocess.CompletedProcess(process.args, process.returncode, output, "")
    _assert_stopped_for_continuation(stopped, fold, epochs_done=1)
    assert "(signal SIGTERM)" in output

    # Started again as it was, without --c (Slurm requeues a preempted first attempt): it
    # resumes its own checkpoint instead of training over it.
    again = _launch(fold_env, 1)
    _assert_completed(again, fold, epochs=2)
    assert "checkpoint_latest.pth is there without --c" in again.stdout
    assert _trained_epochs(fold) == [[0], [1]]


SLOW_VALIDATION = """
import multiprocessing
import time
from pathlib import Path

from hpcnn_tiny_trainer import hpcnnTinyTrainer


class hpcnnSlowValidationTrainer(hpcnnTinyTrainer):
    \"\"\"Validation that waits, as nnU-Net's own does, with a pool of spawned workers idle on
    their task queue: long enough for a signal to land in it.\"\"\"

    def perform_actual_validation(self, save_probabilities=False):
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map(abs, [1, 2])
            Path(self.output_folder, "validating").touch()
            time.sleep(60)
        super().perform_actual_validation(save_probabilities)
"""


def test_a_signal_during_validation_keeps_the_trained_epochs_and_the_continuation_validates(
        fold_env: dict[str, str], tmp_path: Path) -> None:
    """The time limit falls after the last epoch, in validation, and the scheduler's SIGTERM
    reaches the validation's worker processes too (a pool whose idle worker died holding the
    queue's lock hangs in its cleanup: the job was SIGKILLed with no record in CI). The attempt
    exits at once asking for a continuation, its record says which epochs it trained, and the
    continuation only validates."""
    extra = tmp_path / "ext"
    extra.mkdir()
    (extra / "slow_validation.py").write_text(SLOW_VALIDATION)
    fold_env["nnUNet_extTrainer"] += os.pathsep + str(extra)
    fold = Path(fold_env["nnUNet_results"], "Dataset501_Tiny",
                "hpcnnSlowValidationTrainer__nnUNetPlans__3d_fullres", "fold_2")
    command = _command(2)
    command[command.index(TINY_TRAINER)] = "hpcnnSlowValidationTrainer"
    process = subprocess.Popen(command, env=fold_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (fold / "validating").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no validation"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGTERM)
        # A scheduler's KillWait is 30 s or less. The output ends when every process holding
        # it has ended: the pool's replacements for the workers the signal killed too.
        output, _ = process.communicate(timeout=30)
    finally:
        _kill_group(process)
    assert process.returncode == EXIT_CONTINUE, output[-3000:]
    assert _epoch(fold / "checkpoint_final.pth") == 2, "the trained model's own final checkpoint"
    attempt = json.loads((fold / "hpcnn_provenance.json").read_text())["attempts"][-1]
    assert (attempt["start_epoch"], attempt["next_epoch"]) == (0, 2), attempt
    assert attempt["stopped"] == "during validation: signal SIGTERM", attempt
    assert attempt["exit_code"] == EXIT_CONTINUE and attempt["ended"], attempt

    (extra / "slow_validation.py").write_text(SLOW_VALIDATION.replace("time.sleep(60)", "pass"))
    second = _launch(fold_env, 2, "--c", "-tr", "hpcnnSlowValidationTrainer")
    _assert_completed(second, fold, epochs=2)  # validating again trains nothing
    attempts = json.loads((fold / "hpcnn_provenance.json").read_text())["attempts"]
    assert attempts[-1]["start_epoch"] == attempts[-1]["next_epoch"] == 2, attempts


def _kill_group(process: subprocess.Popen) -> None:
    """Whatever a failed test left of the launcher's process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


FORKED_WORKER = """
import multiprocessing, sys, time
sys.path.insert(0, sys.argv[1])
import launcher

stopper = launcher.Stopper(None, 60.0)
launcher.install_stop_handlers(stopper)
stopper.interruptible = False  # in an epoch: the launcher's own handler only takes note
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
worker.start()
time.sleep(1)  # the worker runs
worker.terminate()  # what a data-loader's shutdown does with a worker that did not stop
worker.join(2)
print(worker.exitcode)
launcher.kill_children()
worker.join(30)
print(worker.exitcode)
"""


def test_a_data_loader_worker_outlives_sigterm_in_an_epoch_and_is_killed_after_it() -> None:
    """nnU-Net's data-loader workers are forked from the launcher and keep its handler: the
    scheduler's SIGTERM must not stop them mid-epoch (the epoch would fail: "background workers
    are no longer alive"), so terminate() cannot stop them either; once training has ended the
    launcher kills those left, or one would hold the job open after the launcher exited."""
    done = subprocess.run([sys.executable, "-c", FORKED_WORKER, str(launcher_path().parent)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", str(-signal.SIGKILL)], done.stdout


def test_refuses_to_run_without_the_nnunet_paths(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    done = subprocess.run(_command(0), env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == launcher_module.EXIT_USAGE
    assert "nnUNet_preprocessed and nnUNet_results not set" in done.stderr
