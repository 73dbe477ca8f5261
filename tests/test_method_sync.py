"""``hpcnn sync`` of an experiment: every configuration by default (``-c`` picks some), and what
a find_best_configuration job wrote beside them (its answer, each candidate's cross-validation
summary and postprocessing), recorded as the choice ``predict`` uses; never the validation npz
nor the cross-validation segmentations. The "cluster" is a folder of this machine (the local
scheduler with a remote_dir of its own) holding made-up results; the folds are recorded as
completed jobs. No nnU-Net runs here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

DATASET, TRAINER, PLANS = "Dataset501_Tiny", "hpcnnTinyTrainer", "nnUNetPlans"
CONFIGURATIONS = ("2d", "3d_fullres")
ENSEMBLE = (f"ensemble___{TRAINER}__{PLANS}__2d___{TRAINER}__{PLANS}__3d_fullres___0_1")


def _summary(dice: float) -> str:
    return json.dumps({"foreground_mean": {"Dice": dice},
                       "mean": {"1": {"Dice": dice}, "2": {"Dice": dice}}})


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)


def _cluster_results(root: Path) -> Path:
    """What the fold jobs and the find_best job left on the cluster."""
    results = root / "nnUNet_results" / DATASET
    for configuration, dice in zip(CONFIGURATIONS, (0.7, 0.75), strict=True):
        model = results / f"{TRAINER}__{PLANS}__{configuration}"
        _write(model / "dataset.json", json.dumps(
            {"labels": {"background": 0, "liver": 1, "tumor": 2}, "file_ending": ".nrrd"}))
        _write(model / "plans.json", "{}")
        for fold in (0, 1):
            _write(model / f"fold_{fold}" / "checkpoint_final.pth", b"weights")
            _write(model / f"fold_{fold}" / "validation" / "summary.json", _summary(dice))
            _write(model / f"fold_{fold}" / "validation" / f"case{fold}.npz", b"probabilities")
        crossval = model / "crossval_results_folds_0_1"
        _write(crossval / "summary.json", _summary(dice))
        _write(crossval / "postprocessing.pkl", pickle.dumps(([], [])))
        _write(crossval / "postprocessed" / "summary.json", _summary(dice))
        _write(crossval / "case0.nrrd", b"segmentation")
    ensemble = results / "ensembles" / ENSEMBLE
    _write(ensemble / "summary.json", _summary(0.8))
    _write(ensemble / "postprocessing.pkl", pickle.dumps(([], [])))
    _write(ensemble / "postprocessed" / "summary.json", _summary(0.81))
    _write(ensemble / "case0.nrrd", b"segmentation")
    _write(results / "inference_information.json", json.dumps({
        "all_results": {f"{TRAINER}__{PLANS}__2d": 0.7, f"{TRAINER}__{PLANS}__3d_fullres": 0.75,
                        ENSEMBLE: 0.8},
        "best_model_or_ensemble": {"selected_model_or_models": [
            {"configuration": c, "trainer": TRAINER, "plans_identifier": PLANS}
            for c in CONFIGURATIONS]}}))
    _write(results / "inference_instructions.txt", "nnUNetv2_predict ...\n")
    return results


@pytest.fixture
def experiment(workspace: Path, tmp_path: Path) -> Path:
    """Folds 0 and 1 of 2d and 3d_fullres, completed on the "cluster"."""
    from hpcnn.config import load_config
    from hpcnn.jobs.experiment import Experiment
    from hpcnn.jobs.model import FOLD, job_name
    from hpcnn.jobs.submit import record_experiment
    from hpcnn.services.session import Session
    from hpcnn.state import JobRow

    cluster = tmp_path / "cluster"
    _cluster_results(cluster)
    (workspace / "cluster.yaml").write_text(
        f"cluster: {{scheduler: local, remote_dir: {cluster}}}\n"
        f"training: {{trainer: {TRAINER}, folds: [0, 1]}}\n")
    experiment = Experiment(DATASET, TRAINER, PLANS, CONFIGURATIONS, (0, 1))
    with Session(load_config()) as session:
        record_experiment(session.registry, experiment, session.host)
        for run in experiment.runs:
            for fold in (0, 1):
                name = job_name(run.id, fold)
                job_dir = session.remote.job_dir(run.id, name)
                _write(Path(job_dir) / "exit_code", "0\n")
                session.registry.add(JobRow(name=name, run=run.id, kind=FOLD, fold=fold,
                                            attempt=1, job_dir=job_dir, scheduler="local",
                                            state="completed", scheduler_id=f"{fold}"))
    return workspace / "nnUNet_results" / DATASET


def test_sync_brings_every_configuration_and_find_bests_answer(experiment: Path,
                                                               hpcnn) -> None:
    code, out, err = hpcnn("sync", "-c", "2d")
    assert code == 0, out + err
    model_2d = experiment / f"{TRAINER}__{PLANS}__2d"
    assert (model_2d / "fold_1" / "checkpoint_final.pth").is_file()
    assert not (experiment / f"{TRAINER}__{PLANS}__3d_fullres").exists(), "-c 2d: 2d only"

    code, out, err = hpcnn("sync")
    assert code == 0, out + err
    for configuration in CONFIGURATIONS:
        model = experiment / f"{TRAINER}__{PLANS}__{configuration}"
        assert (model / "plans.json").is_file()
        assert (model / "fold_0" / "checkpoint_final.pth").is_file()
        assert (model / "crossval_results_folds_0_1" / "postprocessing.pkl").is_file()
        assert (model / "crossval_results_folds_0_1" / "postprocessed" / "summary.json").is_file()
        assert not (model / "crossval_results_folds_0_1" / "case0.nrrd").exists()
        assert not list(model.glob("fold_*/validation/*.npz")), "npz only when asked"
    ensemble = experiment / "ensembles" / ENSEMBLE
    assert (ensemble / "postprocessing.pkl").is_file() and (ensemble / "summary.json").is_file()
    assert not (ensemble / "case0.nrrd").exists()
    assert (experiment / "inference_instructions.txt").is_file()
    choice = json.loads((experiment / "hpcnn_choice.json").read_text())
    assert choice["members"] == list(CONFIGURATIONS)
    assert choice["postprocessing"] == f"ensembles/{ENSEMBLE}/postprocessing.pkl"
    assert "find-best chose ensemble of 2d + 3d_fullres" in out

    code, out, err = hpcnn("sync", "-c", "3d_lowres")
    assert code == 2 and "trains no 3d_lowres" in err
