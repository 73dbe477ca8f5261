"""Walltime and memory values at their limits, day units, and the exact messages a user reads
(issue 8: ``"d": 86400`` → ``3600`` went unnoticed, a ``2d`` request became 2 hours)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hpcnn.units import parse_memory, parse_walltime


@pytest.mark.parametrize(("text", "seconds"), [
    ("2d", 2 * 86400), ("1d12h", 129600), ("1.5d", 129600), ("2D", 172800),
    ("3-0:00:00", 3 * 86400), ("1s", 1), ("30s", 30), (" 2h ", 7200), ("0:01", 1),
])
def test_walltime_days_and_smallest(text: str | int, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(("text", "mb"), [
    ("64 gb", 65536), (" 1m ", 1), ("1.5m", 2), ("1024k", 1), ("2048kb", 2),
    ("1t", 1048576),
])
def test_memory_spaces_and_smallest(text: str | int, mb: int) -> None:
    assert parse_memory(text) == mb


READ_ME = ": use HH:MM:SS (5:00:00), or 5h, 90m, 1h30m"


@pytest.mark.parametrize(("parse", "value", "message"), [
    (parse_walltime, True, "not a walltime: True"),
    (parse_walltime, "0s", "walltime must be positive, got '0s'"),
    (parse_walltime, "0:00:00", "walltime must be positive, got '0:00:00'"),
    (parse_walltime, "1:60:00", "minutes and seconds must be below 60 in walltime '1:60:00'"),
    (parse_walltime, "2 days", "cannot read walltime '2 days'" + READ_ME),
    (parse_walltime, "1-2h", "cannot read walltime '1-2h'" + READ_ME),
    (parse_memory, False, "not a memory size: False"),
    (parse_memory, "0gb", "memory size '0gb' is below one megabyte"),
    (parse_memory, "64b", "cannot read memory size '64b': use e.g. 64gb, 64G or 64000mb"),
    (parse_memory, "0.9m", "memory size '0.9m' is below one megabyte"),
    (parse_memory, "512k", "memory size '512k' is below one megabyte"),
])
def test_messages(parse: Callable[[str | int], int], value: str | int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse(value)
    assert str(info.value) == message


@pytest.mark.parametrize(("text", "seconds"), [
    ("1-12", 86400 + 12 * 3600), ("1-12:30", 86400 + 12 * 3600 + 30 * 60),
    ("2-00:00:00", 2 * 86400), ("0-6", 6 * 3600),
])
def test_walltime_slurm_days_hours(text: str, seconds: int) -> None:
    """Slurm's ``days-hours[:minutes[:seconds]]``: the field after the day is hours (``1-12``
    was 1 day and 12 SECONDS, ``1-12:30`` 1 day and 12 minutes)."""
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("value", [5, "5", " 300 ", 18000, 5.0, "-5"])
def test_walltime_without_unit_is_refused(value: str | int) -> None:
    """A bare number is minutes to Slurm and seconds to PBS and Grid Engine: ``walltime: 5``
    became 5 seconds without a word. The message gives the forms hpcnn reads."""
    with pytest.raises(ValueError) as info:
        parse_walltime(value)
    assert str(info.value) == (f"walltime {value!r} has no unit (Slurm reads a bare number as "
                               "minutes, PBS and Grid Engine as seconds): write HH:MM:SS "
                               "(5:00:00), or 5h, 90m, 1h30m")


@pytest.mark.parametrize("value", [64, "64", "64000", 1.5, " 512 "])
def test_memory_without_unit_is_refused(value: str | int) -> None:
    """``mem: 64`` became 64 MB (Slurm's reading; PBS would read bytes) without a word."""
    with pytest.raises(ValueError) as info:
        parse_memory(value)
    assert str(info.value) == (f"memory size {value!r} has no unit (Slurm reads a bare number "
                               "as megabytes, PBS as bytes): write e.g. 64gb, 64G or 64000mb")
