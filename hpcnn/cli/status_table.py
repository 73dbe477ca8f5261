"""The table ``hpcnn status`` prints, and what follows it: one line per fold that fits the
terminal (80 columns included), then one summary line with the next command.

Each column is one ``Column`` in ``COLUMNS`` (a new column is one line there). When the terminal
is too narrow for all of them, the least useful go first (``keep``: lowest first) instead of rich
cutting every cell to ``comp…``; ``--wide`` shows them all and the pseudo-Dice of every class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

Record = dict[str, object]

COLOURS = {"completed": "green", "running": "cyan", "queued": "blue", "held": "blue",
           "failed": "red", "lost": "red", "cancelled": "yellow", "timeout": "yellow",
           "unknown": "magenta", "pending": "bright_black"}
FAILED = ("failed", "lost", "cancelled", "timeout")
WAITING = ("running", "queued", "held", "pending", "unknown")
GAP = 2
"""Blanks between two columns."""


def duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return ""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def mean(values: Sequence[float]) -> float | None:
    """The mean of the values that are numbers (nnU-Net logs nan for a class not yet seen)."""
    known = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    return sum(known) / len(known) if known else None


def _number(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else ""


def _state(r: Record) -> str:
    code = r["exit_code"]
    return f"{r['state']}" + (f" ({code})" if code not in (None, 0) else "")


def _epoch(r: Record) -> str:
    return f"{r['epoch']}" + (f"/{r['planned_epochs']}" if r["planned_epochs"] else "")


def _classes(r: Record) -> str:
    return " ".join(_number(d, 2) for d in r["pseudo_dice"])  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Record], str]
    keep: int
    """Which columns stay on a narrow terminal: the lowest goes first."""
    wide_only: bool = False


COLUMNS = [
    Column("fold", lambda r: str(r["fold"]), 100),
    Column("state", _state, 100),
    Column("try", lambda r: f"{r['attempt']}/{r['attempts']}", 50),
    Column("job", lambda r: str(r["job_id"] or ""), 10),
    Column("node", lambda r: str(r["node"] or ""), 20),
    Column("epoch", _epoch, 90),
    Column("Dice", lambda r: _number(r["pseudo_dice_mean"], 3), 80),
    Column("EMA", lambda r: _number(r["best_ema_dice"], 3), 60),
    Column("s/ep", lambda r: duration(r["mean_epoch_s"]), 40),
    Column("ETA", lambda r: duration(r["eta_s"]), 70),
    Column("GPU-h", lambda r: _number(r["gpu_hours"], 2), 30),
    Column("Dice per class", _classes, 0, wide_only=True),
]
"""Dice: the mean pseudo-Dice over the classes of the last epoch; EMA: nnU-Net's best
exponential moving average of it; s/ep: recent seconds per epoch; try: attempt k of n."""


def widths(columns: list[Column], rows: list[list[str]]) -> list[int]:
    return [max([len(c.header), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]


def fitting(columns: list[Column], sizes: list[int], width: int | None) -> list[int]:
    """The indices of the columns to show: all (``width`` None), else the most useful that
    fit ``width``."""
    shown = list(range(len(columns)))
    while width is not None and len(shown) > 2 and needed(sizes, shown) > width:
        shown.remove(min(shown, key=lambda i: columns[i].keep))
    return shown


def needed(sizes: list[int], shown: list[int]) -> int:
    return sum(sizes[i] for i in shown) + GAP * (len(shown) - 1)


def print_table(console: Console, title: str, records: list[Record], *, wide: bool) -> None:
    """The table: all columns with ``wide`` (as wide as they are), else those that fit the
    console's width. No cell is ever cut short."""
    from rich.table import Table
    from rich.text import Text

    columns = [c for c in COLUMNS if wide or not c.wide_only]
    rows = [[c.cell(r) for c in columns] for r in records]
    sizes = widths(columns, rows)
    shown = fitting(columns, sizes, None if wide else console.width)
    table = Table(title=title, box=None, padding=(0, GAP // 2), pad_edge=False,
                  header_style="bold", title_justify="left")
    for i in shown:
        table.add_column(columns[i].header, no_wrap=True, min_width=sizes[i])
    for record, row in zip(records, rows, strict=True):
        style = COLOURS.get(str(record["state"]), "")
        table.add_row(*(Text(row[i], style=style if columns[i].cell is _state else "")
                        for i in shown))
    console.print(table, width=max(console.width, needed(sizes, shown)), crop=False)


def summary(records: list[Record], answered: bool) -> str:
    """One line: the folds counted by state, and the command to run next."""
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r["state"])] = counts.get(str(r["state"]), 0) + 1
    told = ", ".join(f"{n} {state}" for state, n in counts.items())
    failed = [r["fold"] for r in records if r["state"] in FAILED]
    done = counts.get("completed", 0)
    if not answered:
        after = ("the scheduler did not answer (states only it knows are 'unknown'); next: "
                 "`hpcnn status` again later, `hpcnn doctor` if it persists")
    elif failed:
        after = (f"next: `hpcnn logs {failed[0]} --err` to see why, then "
                 "`hpcnn train-all-folds --resubmit-failed`")
    elif any(r["state"] in WAITING for r in records):
        after = "next: `hpcnn status --watch`" + (
            f" (`hpcnn sync` pulls the {done} finished now)" if done else "")
    else:
        after = "next: `hpcnn sync`, then `hpcnn predict IMAGES OUTPUT`"
    return f"{len(records)} folds: {told}; {after}"
