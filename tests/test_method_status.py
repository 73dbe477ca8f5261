"""What find-best chose, shown where a user follows an experiment: one line in ``hpcnn status``
(and its ``--json``) and ``hpcnn report``, for the experiment's every configuration whatever
``-c`` shows; ``report -c`` picks configurations (default: all of the experiment's). Made-up
models and choice: no nnU-Net runs here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from models import MODEL, fake_model

from hpcnn.nnunet.choice import Choice, write_choice

DATASET, TRAINER = "Dataset501_Tiny", "hpcnnTinyTrainer"
CONFIGURATIONS = ("2d", "3d_fullres")
SUMMARY = {"foreground_mean": {"Dice": 0.8},
           "mean": {"1": {"Dice": 0.7}, "2": {"Dice": 0.9}}}


def _choice(**changes: object) -> Choice:
    fields: dict = dict(
        dataset=DATASET, trainer=TRAINER, plans="nnUNetPlans", folds=[0, 1],
        members=list(CONFIGURATIONS), candidates={}, winner="ensemble___a___b___0_1",
        dice=0.8, dice_postprocessed=0.82, dice_per_class={"liver": 0.7, "tumor": 0.9},
        dice_per_class_postprocessed={"liver": 0.72, "tumor": 0.92},
        postprocessing="ensembles/ensemble___a___b___0_1/postprocessing.pkl", instructions="")
    fields.update(changes)
    return Choice(**fields)


@pytest.fixture
def experiment(workspace: Path) -> Path:
    """Two configurations' models (validated folds 0 and 1) and the experiment in the registry,
    without jobs; returns the dataset's results folder."""
    from hpcnn.config import load_config
    from hpcnn.jobs.experiment import Experiment
    from hpcnn.jobs.submit import record_experiment
    from hpcnn.services.session import Session

    results = workspace / "nnUNet_results"
    fullres = fake_model(results, dataset=DATASET, finished=("0", "1"))
    shutil.copytree(fullres, fullres.with_name(MODEL.replace("3d_fullres", "2d")))
    for model in fullres.parent.iterdir():
        for fold in (0, 1):
            (model / f"fold_{fold}" / "validation").mkdir()
            (model / f"fold_{fold}" / "validation" / "summary.json").write_text(
                json.dumps(SUMMARY))
    (workspace / "cluster.yaml").write_text(f"training: {{trainer: {TRAINER}}}\n")
    with Session(load_config()) as session:
        record_experiment(session.registry, Experiment(DATASET, TRAINER, "nnUNetPlans",
                                                       CONFIGURATIONS, (0, 1)), session.host)
    return fullres.parent


WINNER = ("find-best chose ensemble of 2d + 3d_fullres; postprocessing on (Dice 0.8000 -> "
          "0.8200); cross-validation Dice 0.8200")


def test_status_shows_the_winner_once_find_best_chose(experiment: Path, hpcnn) -> None:
    code, out, err = hpcnn("status")
    assert "find-best chose" not in out, "nothing chosen yet"
    write_choice(experiment, _choice())
    code, out, err = hpcnn("status")
    assert WINNER in out, out + err
    code, out, err = hpcnn("status", "-c", "2d")
    assert WINNER in out, "the experiment's choice, whatever -c shows"
    code, out, err = hpcnn("status", "--json")
    record = json.loads(out)
    assert record["choice"]["members"] == list(CONFIGURATIONS)
    assert record["choice"]["summary"].startswith(WINNER)
    write_choice(experiment, _choice(members=["3d_fullres"], dice_postprocessed=0.8))
    code, out, err = hpcnn("status")
    assert ("find-best chose 3d_fullres (no ensemble); postprocessing off (it does not help); "
            "cross-validation Dice 0.8000") in out
    write_choice(experiment, _choice(trainer="nnUNetTrainer"))
    code, out, err = hpcnn("status")
    assert "find-best chose" not in out, "a choice among other models is not this one's"


def test_report_covers_the_experiments_configurations_and_the_winner(
        experiment: Path, workspace: Path, hpcnn) -> None:
    write_choice(experiment, _choice())
    code, out, err = hpcnn("report")
    assert code == 0, err
    for configuration in CONFIGURATIONS:
        assert (workspace / f"report-{DATASET}-{TRAINER}__nnUNetPlans__{configuration}.png"
                ).is_file()
    assert WINNER in out
    for png in workspace.glob("report-*.png"):
        png.unlink()
    code, out, err = hpcnn("report", "-c", "2d")
    assert code == 0, err
    assert [p.name for p in workspace.glob("report-*.png")] == [
        f"report-{DATASET}-{TRAINER}__nnUNetPlans__2d.png"]
    code, out, err = hpcnn("report", "-c", "3d_lowres")
    assert code == 2 and "trains no 3d_lowres" in err


def test_export_carries_the_experiments_configurations_or_those_asked(
        experiment: Path, tmp_path: Path, hpcnn) -> None:
    import zipfile

    def names(zip_file: Path) -> set[str]:
        return {n.split("/")[1] for n in zipfile.ZipFile(zip_file).namelist()}

    code, out, err = hpcnn("export", tmp_path / "all.zip")
    assert code == 0, err
    models = {f"{TRAINER}__nnUNetPlans__{c}" for c in CONFIGURATIONS}
    assert names(tmp_path / "all.zip") == models, "no choice yet: every configuration"
    write_choice(experiment, _choice())
    code, out, err = hpcnn("export", tmp_path / "method.zip")
    assert code == 0, err
    assert names(tmp_path / "method.zip") == {*models, "hpcnn_choice.json"}
    code, out, err = hpcnn("export", tmp_path / "2d.zip", "-c", "2d")
    assert code == 0, err
    assert names(tmp_path / "2d.zip") == {f"{TRAINER}__nnUNetPlans__2d"}, "no choice it cannot use"
