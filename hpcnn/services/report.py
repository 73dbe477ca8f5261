"""``hpcnn report``: the training curves of every fold side by side and the validation Dice table,
in one PNG (and, when asked, one self-contained HTML page), from a model folder on this machine.

nnU-Net draws a ``progress.png`` per fold, one attempt at a time (a continued fold's plot starts
where its checkpoint's logger does) and with no validation result; comparing five folds means
opening five images and five ``summary.json`` files. Here the curves come from all training logs
of each fold merged (training_log.py: the same parser ``hpcnn status`` uses) and the table from
``fold_K/validation/summary.json``. The plot is drawn from ``Report.series`` only, so tests check
that model rather than pixels. No torch: matplotlib only, imported when drawing.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hpcnn.errors import DataError
from hpcnn.nnunet.model_folder import ModelFolder, open_model
from hpcnn.nnunet.training_log import TrainingLog, read_fold

PANELS = ("loss", "pseudo-Dice", "epoch time (s)")
NO_CURVES = ("the training curves are not in this model: its fold folders hold no nnU-Net "
             "training log (training_log_*.txt; a model zip carries none), so the report shows "
             "the validation Dice only")
SUMMARY = Path("validation", "summary.json")


@dataclass(frozen=True)
class Series:
    """One line of the plot: a fold's column, a panel (row), a legend label, its points."""

    fold: str
    panel: str
    label: str
    epochs: list[int]
    values: list[float]


@dataclass
class FoldReport:
    """What one fold contributes: its merged training log and its validation Dice."""

    fold: str
    log: TrainingLog
    dice: dict[str, float | None]  # class name → Dice (None: not in summary.json)
    mean_dice: float | None  # nnU-Net's foreground mean
    summary_problem: str | None = None  # why there is no validation result


@dataclass
class Report:
    model: ModelFolder
    classes: list[str]
    folds: list[FoldReport]
    series: list[Series] = field(default_factory=list)

    @property
    def has_curves(self) -> bool:
        """Whether any fold has a training log to draw (an imported model has none)."""
        return bool(self.series)

    def plotted_folds(self) -> list[str]:
        return list(dict.fromkeys(s.fold for s in self.series))

    def dice_table(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows (one per fold, then the mean over folds) as printed text."""
        header = ["fold", *self.classes, "mean"]
        rows = [[f.fold, *(_fmt(f.dice.get(c)) for c in self.classes), _fmt(f.mean_dice)]
                for f in self.folds]
        done = [f for f in self.folds if f.mean_dice is not None]
        if len(done) > 1:
            rows.append([f"mean ({len(done)})",
                         *(_fmt(_mean([f.dice.get(c) for f in done])) for c in self.classes),
                         _fmt(_mean([f.mean_dice for f in done]))])
        return header, rows


@dataclass
class Written:
    report: Report
    paths: list[Path]


def collect(model_dir: Path) -> Report:
    """Read every fold's training logs and validation summary; nothing is drawn here."""
    model = open_model(model_dir)
    class_keys = _class_keys(model)
    report = Report(model, list(class_keys.values()), [])
    for fold, folder in model.fold_dirs.items():
        dice, mean, problem = _validation(folder / SUMMARY, class_keys)
        entry = FoldReport(fold, read_fold(folder), dice, mean, problem)
        report.folds.append(entry)
        report.series.extend(_series(entry, report.classes))
    if not report.series and all(f.mean_dice is None for f in report.folds):
        raise DataError(f"{model_dir}: no training log and no validation/summary.json in any "
                        "fold folder", hint="train (or sync) at least one fold, then report again")
    return report


def _class_keys(model: ModelFolder) -> dict[str, str]:
    """summary.json's key for each foreground class ("1", or "(1, 2)" for a region) → its name."""
    keys = {}
    for name, value in model.dataset_json["labels"].items():
        key = str(tuple(value)) if isinstance(value, list) else str(value)
        if key != "0" and name != "ignore":
            keys[key] = str(name)
    return keys


def _validation(path: Path, class_keys: dict[str, str]
                ) -> tuple[dict[str, float | None], float | None, str | None]:
    if not path.is_file():
        return {}, None, "no validation yet"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        per_class = {name: _number(summary["mean"].get(key, {}).get("Dice"))
                     for key, name in class_keys.items()}
        return per_class, _number(summary["foreground_mean"]["Dice"]), None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {}, None, f"unreadable {SUMMARY} ({type(exc).__name__})"


def _series(fold: FoldReport, classes: list[str]) -> list[Series]:
    epochs = fold.log.epochs
    if not epochs:
        return []
    x = [e.epoch for e in epochs]

    def line(panel: str, label: str, values: list[float | None]) -> Series:
        return Series(fold.fold, panel, label, x, [math.nan if v is None else v for v in values])

    out = [line(PANELS[0], "train loss", [e.train_loss for e in epochs]),
           line(PANELS[0], "val loss", [e.val_loss for e in epochs])]
    names = classes if all(len(e.pseudo_dice) == len(classes) for e in epochs) else [
        f"class {i + 1}" for i in range(max(len(e.pseudo_dice) for e in epochs))]
    for i, name in enumerate(names):
        out.append(line(PANELS[1], name, [e.pseudo_dice[i] if i < len(e.pseudo_dice) else None
                                          for e in epochs]))
    out.append(line(PANELS[2], "epoch time", [e.epoch_time for e in epochs]))
    return out


def render_png(report: Report) -> bytes:
    """The figure: one column per fold with curves, three panel rows, the Dice table below."""
    from io import BytesIO

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    folds = report.plotted_folds()
    columns = max(len(folds), 1)
    header, rows = report.dice_table()
    table_height = 0.3 * (len(rows) + 2)
    figure = Figure(figsize=(max(4.2 * columns, 7.0), 8.5 + table_height), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(PANELS) + 1, columns,
                               height_ratios=[3, 3, 2, table_height])
    by_fold = {f.fold: f for f in report.folds}
    for col, fold in enumerate(folds):
        for row, panel in enumerate(PANELS):
            share = figure.axes[row] if col else None  # same y scale along a row
            axes = figure.add_subplot(grid[row, col], sharey=share)
            for s in report.series:
                if s.fold == fold and s.panel == panel:
                    axes.plot(s.epochs, s.values, label=s.label,
                              marker="." if len(s.epochs) < 30 else None)
            axes.set_ylabel(panel if col == 0 else "")
            axes.grid(alpha=0.3)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == 0:
                axes.set_title(_fold_title(by_fold[fold]), fontsize=10)
            if row == len(PANELS) - 1:
                axes.set_xlabel("epoch")
            if col == 0 or panel == PANELS[1]:
                axes.legend(fontsize=8, loc="best")
    if not folds:  # say why there are no curves rather than leave the panels blank
        note = figure.add_subplot(grid[:len(PANELS), :])
        note.axis("off")
        note.text(0.5, 0.5, NO_CURVES.replace(": ", ":\n", 1), ha="center", va="center",
                  wrap=True, fontsize=11)
    table_axes = figure.add_subplot(grid[len(PANELS), :])
    table_axes.axis("off")
    table_axes.set_title("validation Dice (validation/summary.json)", fontsize=10)
    table = table_axes.table(cellText=rows or [["—"] * len(header)], colLabels=header,
                             loc="upper center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    figure.suptitle(report.model.identifier)
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _fold_title(fold: FoldReport) -> str:
    log = fold.log
    parts = [f"fold {fold.fold}: {len(log.epochs)} epochs"]
    if log.attempts > 1:
        parts.append(f"{log.attempts} runs")
    if log.best_ema:
        parts.append(f"best EMA {log.best_ema[0]:.3f}")
    return ", ".join(parts)


def render_html(report: Report, png: bytes) -> str:
    """A page that needs nothing else: the PNG inline (base64) and the table as HTML."""
    header, rows = report.dice_table()
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    notes = "".join(f"<li>fold {esc(f.fold)}: {esc(f.summary_problem)}</li>"
                    for f in report.folds if f.summary_problem)
    if not report.has_curves:
        notes = f"<li>{esc(NO_CURVES)}</li>" + notes
    title = esc(f"hpcnn report: {report.model.identifier}")
    image = base64.b64encode(png).decode("ascii")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:.3em .8em;text-align:right}</style>"
            f"</head><body><h1>{title}</h1>"
            f"<img alt=\"training curves\" style=\"max-width:100%\" "
            f"src=\"data:image/png;base64,{image}\">"
            f"<h2>Validation Dice</h2><table><tr>{head}</tr>{body}</table>"
            + (f"<ul>{notes}</ul>" if notes else "") + "</body></html>\n")


def default_output(model_dir: Path) -> Path:
    """``./report-<DatasetNNN_Name>-<Trainer__Plans__config>.png`` in the working directory."""
    return Path(f"report-{model_dir.resolve().parent.name}-{model_dir.resolve().name}.png")


def write_report(model_dir: Path, out: Path | None = None, *, with_html: bool = False) -> Written:
    """Collect, draw and write the PNG (and the HTML page beside it)."""
    from hpcnn.fsutil import atomic_write_text, data_modes

    report = collect(model_dir)
    png_path = out or default_output(model_dir)
    png = render_png(report)
    mode = data_modes().file  # curves and scores of the user's data: as private as the data
    _write_bytes(png_path, png, mode)
    paths = [png_path]
    if with_html:
        paths.append(atomic_write_text(png_path.with_suffix(".html"), render_html(report, png),
                                       mode=mode))
    return Written(report, paths)


def _write_bytes(path: Path, data: bytes, mode: int) -> None:
    """Temp file beside ``path``, then rename (fsutil's writer is for text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return sum(known) / len(known) if known else None


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"
