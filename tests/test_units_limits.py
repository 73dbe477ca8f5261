"""Walltime and memory values at their limits, day units, and the exact messages a user reads
(issue 8: ``"d": 86400`` → ``3600`` went unnoticed, a ``2d`` request became 2 hours)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hpcnn.units import parse_memory, parse_walltime


@pytest.mark.parametrize(("text", "seconds"), [
    ("2d", 2 * 86400), ("1d12h", 129600), ("1.5d", 129600), ("2D", 172800), ("1-30", 86430),
    ("3-0:00:00", 3 * 86400), ("1", 1), (1, 1), ("30s", 30), (" 2h ", 7200),
])
def test_walltime_days_and_smallest(text: str | int, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(("text", "mb"), [
    ("64 gb", 65536), (" 1 ", 1), (1, 1), ("1.5", 2), ("1024k", 1), ("2048kb", 2),
    ("1t", 1048576),
])
def test_memory_spaces_and_smallest(text: str | int, mb: int) -> None:
    assert parse_memory(text) == mb


READ_ME = ": use HH:MM:SS (5:00:00), or 5h, 90m, 1h30m"


@pytest.mark.parametrize(("parse", "value", "message"), [
    (parse_walltime, True, "not a walltime: True"),
    (parse_walltime, 0, "walltime must be positive, got 0"),
    (parse_walltime, -5, "walltime must be positive, got -5"),
    (parse_walltime, "0:00:00", "walltime must be positive, got '0:00:00'"),
    (parse_walltime, "1:60:00", "minutes and seconds must be below 60 in walltime '1:60:00'"),
    (parse_walltime, "2 days", "cannot read walltime '2 days'" + READ_ME),
    (parse_walltime, "1-2h", "cannot read walltime '1-2h'" + READ_ME),
    (parse_memory, False, "not a memory size: False"),
    (parse_memory, 0, "memory must be positive, got 0"),
    (parse_memory, "64b", "cannot read memory size '64b': use e.g. 64gb, 64G or 64000mb"),
    (parse_memory, "0.9", "memory size '0.9' is below one megabyte"),
    (parse_memory, "512k", "memory size '512k' is below one megabyte"),
])
def test_messages(parse: Callable[[str | int], int], value: str | int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse(value)
    assert str(info.value) == message
