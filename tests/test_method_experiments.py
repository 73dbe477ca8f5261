"""Experiments of one dataset side by side: one with other plans while another still has jobs
queued or running is refused before anything is pushed (their find-best answers share one file,
and plans planned again would change under the running folds); and ``status`` of an experiment
reads every configuration in ONE remote command. No nnU-Net runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATASET, TRAINER = "Dataset501_Tiny", "hpcnnTinyTrainer"
RESENC = "nnUNetResEncUNetMPlans"


def _plans(path: Path, patch: int) -> None:
    path.write_text(json.dumps({"plans_name": path.stem, "configurations": {
        c: {"patch_size": [patch] * 3} for c in ("2d", "3d_fullres")}}))


@pytest.fixture
def busy(workspace: Path) -> Path:
    """A preprocessed dataset (two plans files) and a 3d_fullres experiment with nnUNetPlans
    whose fold 0 is running; returns the preprocessed folder."""
    from hpcnn.config import load_config
    from hpcnn.jobs.experiment import Experiment
    from hpcnn.jobs.model import FOLD, job_name
    from hpcnn.jobs.submit import record_experiment
    from hpcnn.services.session import Session
    from hpcnn.services.train import plans_digest
    from hpcnn.state import JobRow

    pre = workspace / "nnUNet_preprocessed" / DATASET
    pre.mkdir(parents=True)
    _plans(pre / "nnUNetPlans.json", 32)
    _plans(pre / f"{RESENC}.json", 32)
    (pre / "splits_final.json").write_text(json.dumps(
        [{"train": [c for c in "abcde" if c != v], "val": [v]} for v in "abcde"]))
    (workspace / "cluster.yaml").write_text(f"training: {{dataset: 501, trainer: {TRAINER}}}\n")
    experiment = Experiment(DATASET, TRAINER, "nnUNetPlans", ("3d_fullres",), (0, 1, 2, 3, 4))
    with Session(load_config()) as session:
        record_experiment(session.registry, experiment, session.host,
                          plans_sha256=plans_digest(session, experiment))
        run = experiment.runs[0]
        name = job_name(run.id, 0)
        session.registry.add(JobRow(name=name, run=run.id, kind=FOLD, fold=0, attempt=1,
                                    job_dir=session.remote.job_dir(run.id, name),
                                    scheduler="local", state="running", scheduler_id="1"))
    return pre


def test_other_plans_beside_a_running_experiment_are_refused(busy: Path, hpcnn) -> None:
    code, out, err = hpcnn("train-all-folds", "--plans", RESENC, "--dry-run")
    assert code == 2, out + err
    assert "experiment 501-hpcnnTinyTrainer-3d_fullres of Dataset501_Tiny still has jobs" in err
    assert "inference_information.json" in err
    assert "hpcnn cancel --run 501-hpcnnTinyTrainer-3d_fullres" in err

    code, out, err = hpcnn("train-all-folds", "-c", "2d", "--dry-run")
    assert code == 0, "the same plans: another configuration trains beside it\n" + err

    _plans(busy / "nnUNetPlans.json", 16)  # planned again, e.g. another --gpu-memory-target
    code, out, err = hpcnn("train-all-folds", "-c", "2d", "--dry-run")
    assert code == 2 and "nnUNetPlans.json was planned again" in err, err


def test_status_of_an_experiment_is_one_remote_command(busy: Path, workspace: Path,
                                                       monkeypatch) -> None:
    from hpcnn.config import load_config
    from hpcnn.jobs.experiment import Experiment
    from hpcnn.jobs.model import FOLD, job_name
    from hpcnn.jobs.submit import record_experiment
    from hpcnn.services.session import Session
    from hpcnn.services.status import experiment_status
    from hpcnn.state import JobRow

    experiment = Experiment(DATASET, TRAINER, "nnUNetPlans", ("2d", "3d_fullres"), (0, 1))
    with Session(load_config()) as session:
        record_experiment(session.registry, experiment, session.host)
        for run in experiment.runs:
            for fold in (0, 1):
                name = job_name(run.id, fold)
                session.registry.add(JobRow(
                    name=name, run=run.id, kind=FOLD, fold=fold, attempt=1,
                    job_dir=session.remote.job_dir(run.id, name), scheduler="local",
                    state="queued", scheduler_id=str(10 + fold)))
        conn, commands = session.conn, []
        run_shell = conn.run_shell
        monkeypatch.setattr(conn, "run_shell",
                            lambda line, **kw: commands.append(line) or run_shell(line, **kw))
        statuses = experiment_status(session)
    assert sorted(s.run.configuration for s in statuses) == ["2d", "3d_fullres"]
    assert [[f.view.fold for f in s.folds] for s in statuses] == [[0, 1], [0, 1]]
    assert len(commands) == 1, commands
