"""nnU-Net's training logs (``fold_K/training_log_*.txt``) as per-epoch records.

nnU-Net writes one block of lines per epoch (nnunet-facts.md has an example) and starts a new log
file for every run of a fold, so a fold continued after its walltime has several. ``hpcnn status``
(on log tails fetched in its one remote round trip) and ``hpcnn report`` (on synced folders) both
need the epochs of all attempts in one sequence: this module merges them, keeps the later record
of an epoch that was trained twice (and says which ones were), and tolerates what a tail or a
killed job leaves: a block cut at the start, a half-written last line. Pure stdlib and one pass
over the text, so status stays fast whatever the number of folds.

Values are read as nnU-Net prints them: plain floats, or ``np.float32(0.29)`` in lists under
numpy 2, and ``nan`` for a class that was absent from the validation batches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

LOG_GLOB = "training_log_*.txt"
_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?): (.*?)\s*$")
_NAME_TIME = re.compile(r"training_log_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)_(\d+)")
_NUMPY_SCALAR = re.compile(r"np\.\w+\(([^()]*)\)")
_PLANNED = re.compile(r"hpcnn launcher: training from epoch \d+ of (\d+)")


@dataclass
class EpochRecord:
    """One epoch as nnU-Net logged it; ``epoch_time`` is None while the epoch is unfinished."""

    epoch: int
    started: datetime
    source: str = ""
    learning_rate: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    pseudo_dice: list[float] = field(default_factory=list)
    epoch_time: float | None = None
    new_best_ema: float | None = None  # set when this epoch raised the best EMA pseudo-Dice

    @property
    def finished(self) -> bool:
        return self.epoch_time is not None


@dataclass
class LogFile:
    """What one log file (one attempt) says."""

    source: str
    epochs: list[EpochRecord]
    planned_epochs: int | None = None
    training_done: bool = False
    validation_dice: float | None = None


@dataclass
class TrainingLog:
    """The epochs of all attempts of a fold, merged."""

    epochs: list[EpochRecord]  # finished epochs, one per number, ascending
    attempts: int = 0
    repeated: list[int] = field(default_factory=list)  # finished in more than one attempt
    in_progress: EpochRecord | None = None  # started in the newest log, not finished
    planned_epochs: int | None = None  # from hpcnn's launcher line, when there is one
    training_done: bool = False
    validation_dice: float | None = None

    @property
    def last(self) -> EpochRecord | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def best_ema(self) -> tuple[float, int] | None:
        """The best EMA pseudo-Dice and the epoch that reached it."""
        best = [(e.new_best_ema, e.epoch) for e in self.epochs if e.new_best_ema is not None]
        return max(best) if best else None

    def mean_epoch_time(self, last_n: int | None = None) -> float | None:
        """Mean seconds per epoch (of the last ``last_n`` finished epochs)."""
        times = [e.epoch_time for e in self.epochs if e.epoch_time is not None]
        times = times[-last_n:] if last_n else times
        return sum(times) / len(times) if times else None

    def eta_seconds(self, planned_epochs: int | None = None,
                    last_n: int | None = 10) -> float | None:
        """Seconds of training left at the recent pace (validation not included)."""
        planned = planned_epochs or self.planned_epochs
        mean = self.mean_epoch_time(last_n)
        if planned is None or mean is None:
            return None
        done = self.last.epoch + 1 if self.last else 0
        return max(planned - done, 0) * mean


def parse_text(text: str, source: str = "") -> LogFile:
    """One log's text (or the tail of one): the epoch blocks it holds."""
    log = LogFile(source, [])
    current: EpochRecord | None = None
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue  # the plans dump, a truncated line, a tail's cut first line
        stamp, message = match.groups()
        if message.startswith("Epoch time:"):
            value = _number(message[len("Epoch time:"):].removesuffix("s"))
            if current is not None and value is not None:
                current.epoch_time = value
        elif message.startswith("Epoch "):
            number = message[len("Epoch "):]
            if number.isdigit():
                current = EpochRecord(int(number), datetime.fromisoformat(stamp), source)
                log.epochs.append(current)
        elif message == "Training done.":
            log.training_done = True
        elif message.startswith("Mean Validation Dice:"):
            log.validation_dice = _number(message[len("Mean Validation Dice:"):])
        elif planned := _PLANNED.match(message):
            log.planned_epochs = int(planned.group(1))
        elif current is not None:
            _read_value(current, message)
    return log


def _read_value(record: EpochRecord, message: str) -> None:
    """Fills the field of ``record`` that ``message`` reports, if any."""
    for prefix, name in (("Current learning rate:", "learning_rate"),
                         ("train_loss", "train_loss"), ("val_loss", "val_loss"),
                         ("Yayy! New best EMA pseudo Dice:", "new_best_ema")):
        if message.startswith(prefix):
            setattr(record, name, _number(message[len(prefix):]))
            return
    if message.startswith("Pseudo dice"):
        values = _number_list(message[len("Pseudo dice"):])
        if values is not None:
            record.pseudo_dice = values


def _number(text: str) -> float | None:
    text = _NUMPY_SCALAR.sub(r"\1", text).strip()
    try:
        return float(text)
    except ValueError:
        return None


def _number_list(text: str) -> list[float] | None:
    """``[np.float32(0.29), 0.1, nan]`` → floats; None when the list is cut off or garbled."""
    text = _NUMPY_SCALAR.sub(r"\1", text).strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    values = [_number(v) for v in text[1:-1].split(",") if v.strip()]
    return None if any(v is None for v in values) else values  # type: ignore[misc]


def merge(logs: Iterable[LogFile]) -> TrainingLog:
    """The attempts' logs (in any order) as one sequence of epochs."""
    ordered = sorted(logs, key=_start_time)
    merged: dict[int, EpochRecord] = {}
    repeated: set[int] = set()
    result = TrainingLog([], attempts=len(ordered))
    for log in ordered:
        for record in log.epochs:
            if not record.finished:
                continue
            if record.epoch in merged:
                repeated.add(record.epoch)
            merged[record.epoch] = record  # the later attempt is what training continued from
        result.planned_epochs = log.planned_epochs or result.planned_epochs
        result.training_done = result.training_done or log.training_done
        if log.validation_dice is not None:
            result.validation_dice = log.validation_dice
    result.epochs = [merged[k] for k in sorted(merged)]
    result.repeated = sorted(repeated)
    if ordered and ordered[-1].epochs and not ordered[-1].epochs[-1].finished:
        result.in_progress = ordered[-1].epochs[-1]
    return result


def _start_time(log: LogFile) -> tuple[int, ...]:
    """When the attempt started: from nnU-Net's file name (its numbers are not zero-padded, so
    names do not sort), else from its first epoch."""
    match = _NAME_TIME.search(log.source)
    if match:
        return tuple(int(g) for g in match.groups())
    if log.epochs:
        return log.epochs[0].started.timetuple()[:6]
    return (0,)


def parse_texts(texts: Iterable[tuple[str, str]]) -> TrainingLog:
    """``(file name, text)`` pairs, e.g. the log tails ``hpcnn status`` fetched, merged."""
    return merge(parse_text(text, name) for name, text in texts)


def read_fold(folder: Path) -> TrainingLog:
    """Every ``training_log_*.txt`` of a fold folder, merged."""
    return parse_texts((p.name, p.read_text(encoding="utf-8", errors="replace"))
                       for p in folder.glob(LOG_GLOB))
