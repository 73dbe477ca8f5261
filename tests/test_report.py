"""``hpcnn report`` on the session's tiny two-fold model (tests/models.py): the PNG and the
self-contained HTML are written, and the data the plot is drawn from (``Report.series``) holds
one column per fold with as many epochs as the fold's training logs, the table nnU-Net's
validation Dice. A continued fold (two logs), a fold without validation and one with a broken
summary are shown as such."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

from hpcnn.services.report import PANELS, collect

pytest_plugins = ("models",)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _finished_epochs_in_logs(folder: Path) -> int:
    return sum(len(re.findall(r": Epoch time: ", p.read_text()))
               for p in folder.glob("training_log_*.txt"))


def test_report_png_html_and_the_plotted_data(tiny_model: Path, tmp_path: Path, hpcnn) -> None:
    from models import FOLDS

    out = tmp_path / "r" / "report.png"
    code, stdout, err = hpcnn("report", "--model", tiny_model, "--out", out, "--html")
    assert code == 0, err
    png = out.read_bytes()
    assert png.startswith(PNG_MAGIC)
    page = out.with_suffix(".html").read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert embedded and base64.b64decode(embedded.group(1)) == png, "the same PNG, inline"
    assert f"wrote {out}" in stdout

    report = collect(tiny_model)
    labels = [n for n, v in json.loads((tiny_model / "dataset.json").read_text())["labels"].items()
              if v != 0]
    assert report.classes == labels
    assert report.plotted_folds() == [str(f) for f in FOLDS]
    for fold in report.plotted_folds():
        series = [s for s in report.series if s.fold == fold]
        assert [s.panel for s in series].count(PANELS[0]) == 2, "train and val loss"
        assert [s.label for s in series if s.panel == PANELS[1]] == labels
        assert [s.panel for s in series].count(PANELS[2]) == 1
        epochs = _finished_epochs_in_logs(tiny_model / f"fold_{fold}")
        assert epochs > 0 and all(len(s.epochs) == len(s.values) == epochs for s in series)
        assert series[0].epochs == list(range(epochs))

    header, rows = report.dice_table()
    assert header == ["fold", *labels, "mean"]
    for row, fold in zip(rows, FOLDS, strict=False):
        summary = json.loads((tiny_model / f"fold_{fold}/validation/summary.json").read_text())
        assert row[0] == str(fold)
        assert row[1:-1] == [f"{summary['mean'][str(i + 1)]['Dice']:.3f}"
                             for i in range(len(labels))]
        assert row[-1] == f"{summary['foreground_mean']['Dice']:.3f}"
    assert rows[-1][0] == f"mean ({len(FOLDS)})", "the mean over folds closes the table"


def _continuation_log(epoch: int) -> str:
    stamp = "2030-01-02 03:04:05.000001: "
    lines = ["", f"Epoch {epoch}", "Current learning rate: 0.001", "train_loss -0.1",
             "val_loss -0.2", "Pseudo dice [np.float32(0.9), np.float32(0.8)]",
             "Epoch time: 3.1 s"]
    return "".join(f"{stamp}{line} \n" for line in lines)


def test_a_continued_fold_a_missing_and_a_broken_validation(tiny_model: Path,
                                                            tmp_path: Path) -> None:
    from models import copy_model

    model = copy_model(tiny_model, tmp_path)
    before = _finished_epochs_in_logs(model / "fold_0")
    (model / "fold_0" / "training_log_2030_1_2_03_04_05.txt").write_text(
        _continuation_log(before))  # a second attempt trained one more epoch
    (model / "fold_1" / "validation" / "summary.json").write_text('{"foreground_mean": ')
    shutil.copytree(model / "fold_1", model / "fold_2")
    (model / "fold_2" / "validation" / "summary.json").unlink()
    for log in (model / "fold_2").glob("training_log_*.txt"):
        log.unlink()

    report = collect(model)
    assert report.plotted_folds() == ["0", "1"], "fold 2 has no log to plot"
    fold0 = [s for s in report.series if s.fold == "0"]
    assert all(s.epochs == list(range(before + 1)) for s in fold0)
    assert [f.summary_problem for f in report.folds] == [
        None, "unreadable validation/summary.json (JSONDecodeError)", "no validation yet"]
    _, rows = report.dice_table()
    assert [r[0] for r in rows] == ["0", "1", "2"], "one finished validation: no mean row"
    assert rows[1][1:] == rows[2][1:] == ["—"] * (len(report.classes) + 1)


def test_a_model_without_logs_or_validation_is_refused(tmp_path: Path, hpcnn) -> None:
    model = tmp_path / "Dataset501_Tiny" / "hpcnnTinyTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
        "file_ending": ".nii.gz"}))
    code, _, err = hpcnn("report", "--model", model, "--out", tmp_path / "r.png")
    assert code == 2 and "no training log and no validation/summary.json" in err
    assert not (tmp_path / "r.png").exists()
