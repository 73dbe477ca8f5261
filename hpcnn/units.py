"""Parsing and formatting of the walltimes and memory sizes that researchers type.

Users copy values from cluster documentation in every style (``5:00:00``, ``5h``, ``64gb``,
``64G``); hpcnn stores seconds and megabytes and formats them back per scheduler dialect.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MEMORY_UNITS = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


WALLTIME_FORMS = "HH:MM:SS (5:00:00), or 5h, 90m, 1h30m"
MEMORY_FORMS = "e.g. 64gb, 64G or 64000mb"


def parse_walltime(value: str | int) -> int:
    """Seconds for ``5:00:00``, ``90:00`` (MM:SS), ``5h``, ``90m``, ``1h30m``, ``2d``, and
    Slurm's ``1-12:00:00`` / ``1-12`` (days-hours[:minutes[:seconds]]). A bare number is refused:
    Slurm reads ``5`` as minutes, PBS and Grid Engine as seconds, so a job would get a limit
    60 times off one way or the other without a word."""
    if isinstance(value, bool):
        raise ValueError(f"not a walltime: {value!r}")
    text = str(value).strip().lower()
    if re.fullmatch(r"[-+]?\d+(\.\d*)?", text):
        raise ValueError(f"walltime {value!r} has no unit (Slurm reads a bare number as minutes, "
                         f"PBS and Grid Engine as seconds): write {WALLTIME_FORMS}")
    m = re.fullmatch(r"(\d+)-(\d+(?::\d{1,2}){0,2})", text)
    if m:
        # Slurm's days-hours[:minutes[:seconds]]: the field after the day is hours.
        parts = [int(p) for p in m.group(2).split(":")]
        if any(p >= 60 for p in parts[1:]):
            raise ValueError(f"minutes and seconds must be below 60 in walltime {value!r}")
        total = int(m.group(1)) * 86400 + sum(p * 60 ** (2 - i) for i, p in enumerate(parts))
    elif re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        parts = [int(p) for p in text.split(":")]
        if any(p >= 60 for p in parts[1:]):
            raise ValueError(f"minutes and seconds must be below 60 in walltime {value!r}")
        # [HH:]MM:SS; the leading field may exceed 60, as PBS allows.
        total = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    elif re.fullmatch(r"(\d+(\.\d+)?\s*[smhd]\s*)+", text):
        total = 0
        for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text):
            total += float(num) * _DURATION_UNITS[unit]
        total = int(round(total))
    else:
        raise ValueError(f"cannot read walltime {value!r}: use {WALLTIME_FORMS}")
    if total <= 0:
        raise ValueError(f"walltime must be positive, got {value!r}")
    return total


def format_hms(seconds: int) -> str:
    """``18000`` → ``05:00:00`` (hours may exceed 24, as every scheduler accepts)."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def format_bytes(count: float) -> str:
    """``2_500_000`` → ``2.5 MB``: decimal units, three significant digits, as ``df -H`` and
    rsync's progress speak, so that a figure reads the same here and in their output."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 999.5 or unit == "TB":
            break
        count /= 1000
    return f"{count:.3g} {unit}" if unit != "B" and abs(count) < 999.5 else f"{count:.0f} {unit}"


def parse_memory(value: str | int) -> int:
    """Megabytes for ``64gb``, ``64G``, ``64000mb``, ``512M``, ``1.5tb``. A bare number is
    refused: Slurm reads ``64`` as megabytes, PBS as bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    text = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"[-+]?\d+(\.\d*)?", text):
        raise ValueError(f"memory size {value!r} has no unit (Slurm reads a bare number as "
                         f"megabytes, PBS as bytes): write {MEMORY_FORMS}")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt])(i?b)?", text)
    if not m:
        raise ValueError(f"cannot read memory size {value!r}: use {MEMORY_FORMS}")
    mb = float(m.group(1)) * _MEMORY_UNITS[m.group(2)]
    if mb < 1:
        raise ValueError(f"memory size {value!r} is below one megabyte")
    return int(round(mb))


def format_memory(mb: int, style: str = "pbs") -> str:
    """Megabytes as a scheduler writes them: pbs ``64gb``/``500mb``, slurm ``64G``/``500M``."""
    whole_gb = mb % 1024 == 0
    if style == "slurm":
        return f"{mb // 1024}G" if whole_gb else f"{mb}M"
    return f"{mb // 1024}gb" if whole_gb else f"{mb}mb"
