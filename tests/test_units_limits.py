"""Walltime and memory values at their limits, day units, and the exact messages a user reads
(issue 8: ``"d": 86400`` → ``3600`` went unnoticed, a ``2d`` request became 2 hours)."""

from __future__ import annotations

import pytest

from hpcnn.units import parse_memory, parse_walltime


@pytest.mark.parametrize(("text", "seconds"), [
    ("2d", 2 * 86400), ("1d12h", 129600), ("1.5d", 129600), ("2D", 172800), ("1-30", 86430),
    ("3-0:00:00", 3 * 86400), ("1", 1), (1, 1), ("30s", 30), (" 2h ", 7200),
])
def test_walltime_days_and_smallest(text: str | int, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize(("value", "message"), [
    (True, "not a walltime: True"),
    (0, "walltime must be positive, got 0"),
    (-5, "walltime must be positive, got -5"),
    ("0:00:00", "walltime must be positive, got '0:00:00'"),
    ("1:60:00", "minutes and seconds must be below 60 in walltime '1:60:00'"),
    ("2 days", "cannot read walltime '2 days': use HH:MM:SS (5:00:00), or 5h, 90m, 1h30m"),
    ("1-2h", "cannot read walltime '1-2h'"),
])
def test_walltime_messages(value: str | int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_walltime(value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(("text", "mb"), [
    ("64 gb", 65536), (" 1 ", 1), (1, 1), ("1.5", 2), ("1024k", 1), ("2048kb", 2),
    ("1t", 1048576),
])
def test_memory_spaces_and_smallest(text: str | int, mb: int) -> None:
    assert parse_memory(text) == mb


@pytest.mark.parametrize(("value", "message"), [
    (False, "not a memory size: False"),
    (0, "memory must be positive, got 0"),
    ("64b", "cannot read memory size '64b': use e.g. 64gb, 64G or 64000mb"),
    ("0.9", "memory size '0.9' is below one megabyte"),
    ("512k", "memory size '512k' is below one megabyte"),
])
def test_memory_messages(value: str | int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(value)
    assert str(info.value) == message
