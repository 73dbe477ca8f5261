from __future__ import annotations

import pytest

from hpcnn.units import format_bytes, format_hms, format_memory, parse_memory, parse_walltime


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5:00:00", 18000), ("05:00:00", 18000), ("90:00", 5400), ("5h", 18000), ("90m", 5400),
     ("1h30m", 5400), ("1-12:00:00", 129600), ("48:00:00", 172800)],
)
def test_walltime(text: str | int, seconds: int) -> None:
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("text", ["", "5 hours", "1:60:00", "0", "abc", "-5h", "3600", 7200])
def test_walltime_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_walltime(text)


@pytest.mark.parametrize(
    ("text", "mb"),
    [("64gb", 65536), ("64G", 65536), ("64000mb", 64000), ("512M", 512), ("1.5tb", 1572864),
     ("64GiB", 65536)],
)
def test_memory(text: str | int, mb: int) -> None:
    assert parse_memory(text) == mb


@pytest.mark.parametrize("text", ["", "gb", "64 parsecs", "-1gb", "0.1kb", "100", 2048, "1.5"])
def test_memory_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory(text)


def test_formats() -> None:
    assert format_hms(18000) == "05:00:00"
    assert format_hms(172800 + 61) == "48:01:01"
    assert format_memory(65536) == "64gb" and format_memory(500) == "500mb"
    assert format_memory(65536, "slurm") == "64G" and format_memory(500, "slurm") == "500M"


@pytest.mark.parametrize("count,text", [(0, "0 B"), (999, "999 B"), (1000, "1 kB"),
                                        (524_288, "524 kB"), (999_600, "1 MB"),
                                        (1_650_000, "1.65 MB"), (2.5e9, "2.5 GB"),
                                        (4.2e15, "4200 TB")])
def test_format_bytes(count: float, text: str) -> None:
    assert format_bytes(count) == text
