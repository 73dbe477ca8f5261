"""Training-log parsing (hpcnn/nnunet/training_log.py): real nnU-Net logs checked against what
nnU-Net itself recorded in the final checkpoint, and the shapes a remote tail or a killed job
leaves (numpy-2 and plain floats, a half-written line, a block cut at the start, several attempts
whose file names do not sort)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcnn.nnunet.training_log import parse_text, parse_texts, read_fold

pytest_plugins = ("models",)


def test_real_logs_match_what_nnunet_recorded_in_the_checkpoint(tiny_model: Path) -> None:
    import torch
    from models import FOLDS

    labels = json.loads((tiny_model / "dataset.json").read_text())["labels"]
    for fold in FOLDS:
        folder = tiny_model / f"fold_{fold}"
        log = read_fold(folder)
        record = torch.load(folder / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)["logging"]
        assert [e.epoch for e in log.epochs] == list(range(len(record["train_losses"])))
        for e in log.epochs:
            k = e.epoch
            assert e.train_loss == pytest.approx(record["train_losses"][k], abs=1e-4)
            assert e.val_loss == pytest.approx(record["val_losses"][k], abs=1e-4)
            assert e.learning_rate == pytest.approx(record["lrs"][k], abs=1e-5)
            assert len(e.pseudo_dice) == len(labels) - 1, "one value per foreground class"
            assert e.pseudo_dice == pytest.approx(
                [float(v) for v in record["dice_per_class_or_region"][k]], abs=1e-4, nan_ok=True)
            took = record["epoch_end_timestamps"][k] - record["epoch_start_timestamps"][k]
            assert e.epoch_time == pytest.approx(took, abs=0.01)
        best = max(record["ema_fg_dice"])
        assert log.best_ema == (pytest.approx(best, abs=1e-4),
                                list(record["ema_fg_dice"]).index(best))
        summary = json.loads((folder / "validation" / "summary.json").read_text())
        assert log.validation_dice == pytest.approx(summary["foreground_mean"]["Dice"])
        assert log.training_done and log.attempts == 1 and log.repeated == []
        assert log.in_progress is None


def _block(epoch: int, numpy2: bool, *, minute: int = 0, dice: tuple[str, ...] = ("0.2932",
           "0.0969"), seconds: float = 4.2, best: float | None = None) -> str:
    stamp = f"2026-11-28 01:{minute:02d}:48.964783: "
    values = ", ".join(f"np.float32({v})" if numpy2 else v for v in dice)
    lines = [f"Epoch {epoch}", "Current learning rate: 0.00536", f"train_loss 0.{4403 - epoch}",
             "val_loss 0.373", f"Pseudo dice [{values}]", f"Epoch time: {seconds} s"]
    if best is not None:
        lines.append(f"Yayy! New best EMA pseudo Dice: {best}")
    return "".join(f"{stamp}{line} \n" for line in ["", *lines])


@pytest.mark.parametrize("numpy2", [True, False], ids=["numpy2", "plain"])
def test_both_float_styles_and_nan(numpy2: bool) -> None:
    text = _block(0, numpy2, dice=("0.2932", "nan"), best=0.11339999735355377)
    (epoch,) = parse_text(text).epochs
    assert epoch.pseudo_dice[0] == 0.2932 and epoch.pseudo_dice[1] != epoch.pseudo_dice[1]
    assert (epoch.train_loss, epoch.val_loss, epoch.epoch_time) == (0.4403, 0.373, 4.2)
    assert epoch.new_best_ema == pytest.approx(0.1134) and epoch.learning_rate == 0.00536


def test_a_truncated_last_line_and_a_tail_cut_mid_block() -> None:
    text = _block(6, True, seconds=5.0) + _block(7, True, minute=1)
    tail = text[text.index("val_loss"):]  # starts inside epoch 6's block
    cut = tail[: tail.rindex("Pseudo dice") + 30]  # epoch 7's dice line half written
    log = parse_texts([("training_log_2026_11_28_01_00_00.txt", cut)])
    assert [e.epoch for e in log.epochs] == [], "epoch 6 has no header here, 7 is unfinished"
    assert log.in_progress is not None and log.in_progress.epoch == 7
    assert log.in_progress.pseudo_dice == [], "a half-written list is not read"
    assert [e.epoch for e in parse_text(text[: text.rindex("Epoch time")]).epochs] == [6, 7]


def test_attempts_merge_in_start_order_and_a_retrained_epoch_is_reported() -> None:
    # nnU-Net's names are not zero-padded: "2026_9_30" sorts after "2026_10_1" as text.
    first = ("training_log_2026_9_30_23_00_00.txt",
             _block(0, True, best=0.3) + _block(1, True, best=0.4) + _block(2, True)[:150])
    second = ("training_log_2026_10_1_08_00_00.txt",
              _block(1, False, seconds=3.0) + _block(2, False, seconds=5.0, best=0.5)
              + "2026-10-01 08:00:09.1: hpcnn launcher: training from epoch 1 of 10 \n")
    log = parse_texts([second, first])
    assert [e.epoch for e in log.epochs] == [0, 1, 2]
    assert log.repeated == [1], "epoch 1 finished in both attempts"
    assert log.epochs[1].source == second[0] and log.epochs[1].epoch_time == 3.0
    assert log.attempts == 2 and log.in_progress is None
    assert log.best_ema == (0.5, 2)
    assert log.planned_epochs == 10
    assert log.mean_epoch_time() == pytest.approx((4.2 + 3.0 + 5.0) / 3)
    assert log.eta_seconds(last_n=2) == pytest.approx(7 * 4.0), "7 epochs left at 4 s"
    assert log.eta_seconds(planned_epochs=3) == 0


def test_a_fold_folder_without_logs_is_empty(tmp_path: Path) -> None:
    log = read_fold(tmp_path)
    assert log.epochs == [] and log.last is None and log.eta_seconds(5) is None
