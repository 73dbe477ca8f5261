"""What a new user meets first, in a folder with no runs or a run with nothing left to do:
read-only commands leave no state behind, and every "nothing here" answer says so and what to
do next (issue 19, rough edges). Fast: a recorded run with finished folds, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs_helper import record_run

from hpcnn.config import load_config
from hpcnn.jobs.model import FOLD, Run, job_name
from hpcnn.services.session import Session
from hpcnn.state import JobRow

RUN = Run("Dataset501_Tiny", "nnUNetTrainer", "nnUNetPlans", "3d_fullres")


def test_read_only_commands_leave_no_state_in_an_empty_folder(workspace: Path, hpcnn) -> None:
    for args in (["runs"], ["status"], ["status", "--json"], ["logs", "0"], ["sync"],
                 ["report"], ["export", "m.zip"], ["cancel", "--yes"]):
        hpcnn(*args)
        assert not (workspace / ".hpcnn").exists(), f"`hpcnn {' '.join(args)}` left state"
    assert list(workspace.iterdir()) == []


def test_no_runs_answers_say_what_to_do(workspace: Path, hpcnn) -> None:
    code, out, _ = hpcnn("cancel", "--yes")
    assert code == 0 and out.startswith("nothing to cancel: no runs in "), out
    for args in (["report"], ["export", "m.zip"], ["predict", "in", "out"]):
        code, _, err = hpcnn(*args)
        assert code == 2 and "--model DIR" in err and "import-model" in err, (args, err)
    code, _, err = hpcnn("status")  # not a model command: no model advice there
    assert code == 2 and "train-all-folds" in err and "--model" not in err


@pytest.fixture
def finished_run(workspace: Path) -> Path:
    """A run of the local scheduler whose fold 0 completed: its job folder with an output log
    and an empty err.log, its final checkpoint in the results (where local jobs write)."""
    with Session(load_config(None)) as session:
        record_run(session, RUN)
        name = job_name(RUN.id, 0)
        row = session.registry.add(JobRow(
            name=name, run=RUN.id, kind=FOLD, fold=0, job_dir=session.remote.job_dir(RUN.id, name),
            scheduler="local", state="completed", scheduler_id="7", exit_code=0))
    job_dir = Path(row.job_dir)
    job_dir.mkdir(parents=True)
    (job_dir / "out.log").write_text("hpcnn: job started\ntrained\n")
    (job_dir / "err.log").write_text("")
    fold = workspace / "nnUNet_results" / RUN.results_folder / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"w" * 100)
    return workspace


def test_logs_of_an_empty_err_log_and_tail_zero(finished_run: Path, hpcnn) -> None:
    code, out, err = hpcnn("logs", "0", "--err")
    assert code == 0 and out == "" and "err.log" in err and "is empty" in err, err
    code, out, _ = hpcnn("logs", "0", "--tail", "0")
    assert code == 0 and out == ""
    code, out, err = hpcnn("logs", "0", "--tail", "1")
    assert out == "trained\n" and "empty" not in err


def test_cancel_and_sync_with_nothing_to_do_say_so(finished_run: Path, hpcnn,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = hpcnn("cancel")  # nothing to confirm either: no question asked
    assert code == 0 and f"nothing to cancel: run {RUN.id} has no queued or running" in out
    code, out, _ = hpcnn("sync")  # not a terminal (cron): quiet
    assert code == 0 and out == ""
    monkeypatch.setattr("hpcnn.cli.monitor._on_terminal", lambda: True)
    code, out, _ = hpcnn("sync")
    assert code == 0 and f"run {RUN.id}: nothing new to pull; folds synced: 0" in out, out


def test_report_on_a_model_without_training_logs_says_the_curves_are_not_in_it(
        tmp_path: Path, hpcnn) -> None:
    from hpcnn.services.report import collect

    model = tmp_path / "Dataset501_Tiny" / "hpcnnTinyTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0" / "validation").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
        "file_ending": ".nii.gz"}))
    (model / "fold_0" / "validation" / "summary.json").write_text(json.dumps(
        {"mean": {"1": {"Dice": 0.8}}, "foreground_mean": {"Dice": 0.8}}))
    code, out, err = hpcnn("report", "--model", model, "--out", tmp_path / "r.png", "--html")
    assert code == 0, err
    assert "the training curves are not in this model" in out
    assert "fold 0: no training log, validation Dice 0.800" in out
    assert "the training curves are not in this model" in (tmp_path / "r.html").read_text()
    assert not collect(model).has_curves


@pytest.fixture
def unreachable_cluster(workspace: Path) -> Path:
    """A cluster.yaml whose login host refuses every connection (a closed port here)."""
    (workspace / "cluster.yaml").write_text(
        "cluster:\n  scheduler: slurm\n  host: 127.0.0.1\n  port: 1\n  connect_timeout: 5\n")
    return workspace


def test_render_and_dry_run_need_no_connection(unreachable_cluster: Path, hpcnn) -> None:
    ws = unreachable_cluster
    for args in (["render", "-d", "5"], ["train-all-folds", "--dry-run", "-d", "5"]):
        code, _, err = hpcnn(*args)
        assert code == 2 and "no dataset '5' in " in err, (args, err)
        assert "does not connect to the cluster" in err and "ssh" not in err.lower(), err
    # A full name is taken as given (the dataset may be only on the cluster).
    code, out, err = hpcnn("render", "-d", "Dataset005_Prostate", "--fold", "1")
    assert code == 0 and " Dataset005_Prostate 3d_fullres 1 " in out, err
    (ws / "nnUNet_raw" / "Dataset005_Prostate").mkdir(parents=True)
    (ws / "nnUNet_raw" / "Dataset005_Prostate" / "dataset.json").write_text("{}")
    code, out, err = hpcnn("train-all-folds", "--dry-run", "-d", "5", "--preprocess", "remote",
                           "--folds", "0")
    assert code == 0 and "what would run (nothing was done)" in out, err
    assert "sbatch" in out


def _add_fold(session: Session, fold: int, state: str, exit_code: int, err: str = "") -> Path:
    name = job_name(RUN.id, fold)
    row = session.registry.add(JobRow(
        name=name, run=RUN.id, kind=FOLD, fold=fold, job_dir=session.remote.job_dir(RUN.id, name),
        scheduler="local", state=state, scheduler_id=str(20 + fold), exit_code=exit_code))
    job_dir = Path(row.job_dir)
    job_dir.mkdir(parents=True)
    (job_dir / "started").write_text("time=2026-11-28T01:00:00Z\nhost=node-gpu-17.cluster\n")
    (job_dir / "exit_code").write_text(f"{exit_code}\ntime=2026-11-28T03:00:00Z\n")
    (job_dir / "err.log").write_text(err)
    return job_dir


def _training_log(folder: Path, classes: int) -> None:
    """Two epochs of an nnU-Net log with ``classes`` pseudo-Dice values and float32 noise."""
    dice = ", ".join(f"np.float32(0.{61 + i}00000{i}2479248)" for i in range(classes))
    lines = ["hpcnn launcher: training from epoch 0 of 1000"]
    for epoch in (0, 1):
        lines += [f"Epoch {epoch}", "train_loss -0.41", "val_loss -0.52", f"Pseudo dice [{dice}]",
                  "Epoch time: 73.41 s", "Yayy! New best EMA pseudo Dice: 0.6624000072479248"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training_log_2026_11_28_01_00_00.txt").write_text(
        "".join(f"2026-11-28 01:{i:02d}:00.000000: {line}\n"
                for i, line in enumerate(lines)))


def test_status_fits_80_columns_and_ends_with_the_next_command(
        workspace: Path, hpcnn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight classes, a completed and a failed fold, a long node name: the table fits 80
    columns with every state whole, one line a fold with the mean Dice; --json without float
    noise and with every class; --wide with every class."""
    with Session(load_config(None)) as session:
        record_run(session, RUN)
        _add_fold(session, 0, "completed", 0)
        _add_fold(session, 1, "failed", 1, "Traceback\nRuntimeError: boom\n")
    results = workspace / "nnUNet_results" / RUN.results_folder
    _training_log(results / "fold_0", classes=8)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = hpcnn("status")
    assert code == 11, out
    lines = out.splitlines()
    assert max(len(line) for line in lines[:-1]) <= 80, out  # the last: one line, wrapped
    table = [line for line in lines if line.split()[:1] in (["0"], ["1"])]
    assert len(table) == 2, out  # one line per fold, not one per class
    assert "completed" in table[0] and "2/1000" in table[0] and "0.645" in table[0], out
    assert "failed (1)" in table[1], out
    assert "…" not in out
    assert lines[-1] == ("2 folds: 1 completed, 1 failed; next: `hpcnn logs 1 --err` to see "
                         "why, then `hpcnn train-all-folds --resubmit-failed`"), lines[-1]

    code, out, _ = hpcnn("status", "--json")
    fold0 = json.loads(out)["folds"][0]
    assert fold0["best_ema_dice"] == 0.6624 and fold0["mean_epoch_s"] == 73.4
    assert fold0["pseudo_dice"] == [round(0.61 + i / 100, 4) for i in range(8)]
    assert fold0["pseudo_dice_mean"] == 0.645
    assert "0000" not in out.replace("0.0000", "")  # no float32 tails anywhere

    code, out, _ = hpcnn("status", "--wide")
    assert "Dice per class" in out and "0.61 0.62 0.63 0.64 0.65 0.66 0.67 0.68" in out, out
    assert "node-gpu-17.cluster" in out


def test_help_names_every_scheduler_and_each_short_option_means_one_thing(hpcnn) -> None:
    import click

    from hpcnn.cli.main import cli

    code, out, _ = hpcnn("--help")
    top = out.splitlines()[2]  # the line under Usage, whole at 80 columns
    assert code == 0 and all(name in top for name in ("Slurm", "PBS", "Grid Engine")), out
    meanings: dict[str, set[str]] = {}

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            longs = [o for o in param.opts if o.startswith("--")]  # the first: its name
            for short in (o for o in param.opts if not o.startswith("--")):
                meanings.setdefault(short, set()).add(longs[0] if longs else param.name)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "hpcnn")
    assert meanings["-f"] == {"--folds"}, meanings["-f"]
    assert {short: sorted(m) for short, m in meanings.items() if len(m) > 1} == {}
