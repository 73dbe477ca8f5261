"""Parsing and formatting of the walltimes and memory sizes that researchers type.

Users copy values from cluster documentation in every style (``5:00:00``, ``5h``, ``64gb``,
``64G``); hpcnn stores seconds and megabytes and formats them back per scheduler dialect.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MEMORY_UNITS = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_walltime(value: str | int) -> int:
    """Seconds for ``5:00:00``, ``1-12:00:00``, ``90:00``, ``5h``, ``90m``, ``1h30m``, ``3600``."""
    if isinstance(value, bool):
        raise ValueError(f"not a walltime: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"walltime must be positive, got {value}")
        return value
    text = str(value).strip().lower()
    days = 0
    m = re.fullmatch(r"(\d+)-(.+)", text)
    if m:
        days, text = int(m.group(1)), m.group(2)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        parts = [int(p) for p in text.split(":")]
        if any(p >= 60 for p in parts[1:]):
            raise ValueError(f"minutes and seconds must be below 60 in walltime {value!r}")
        # [[HH:]MM:]SS; the leading field may exceed 60, as PBS allows.
        total = days * 86400 + sum(p * 60**i for i, p in enumerate(reversed(parts)))
    elif re.fullmatch(r"\d+", text):
        total = days * 86400 + int(text)
    elif re.fullmatch(r"(\d+(\.\d+)?\s*[smhd]\s*)+", text) and not days:
        total = 0
        for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text):
            total += float(num) * _DURATION_UNITS[unit]
        total = int(round(total))
    else:
        raise ValueError(
            f"cannot read walltime {value!r}: use HH:MM:SS (5:00:00), or 5h, 90m, 1h30m"
        )
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
    """Megabytes for ``64gb``, ``64G``, ``64000mb``, ``512M``, ``1.5tb``; plain numbers are MB."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"memory must be positive, got {value}")
        return value
    text = str(value).strip().lower().replace(" ", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgt])?(i?b)?", text)
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"cannot read memory size {value!r}: use e.g. 64gb, 64G or 64000mb")
    mb = float(m.group(1)) * _MEMORY_UNITS[m.group(2) or "m"]
    if mb < 1:
        raise ValueError(f"memory size {value!r} is below one megabyte")
    return int(round(mb))


def format_memory(mb: int, style: str = "pbs") -> str:
    """Megabytes as a scheduler writes them: pbs ``64gb``/``500mb``, slurm ``64G``/``500M``."""
    whole_gb = mb % 1024 == 0
    if style == "slurm":
        return f"{mb // 1024}G" if whole_gb else f"{mb}M"
    return f"{mb // 1024}gb" if whole_gb else f"{mb}mb"
