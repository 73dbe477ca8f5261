"""Recorded scheduler outputs for the dialect tests: ``NAME.stdout``, ``NAME.stderr`` and
``NAME.rc`` under ``tests/fixtures/<group>/`` (each group's SOURCES.md or MANIFEST.md says
where they come from: documentation, published reports, or the test bed itself)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcnn.schedulers.base import Dialect, SchedulerJob

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@dataclass(frozen=True)
class Capture:
    stdout: str
    stderr: str
    rc: int


def load(group: str, name: str) -> Capture:
    base = FIXTURES / group / name
    return Capture(
        base.with_suffix(".stdout").read_text(),
        base.with_suffix(".stderr").read_text(),
        int(base.with_suffix(".rc").read_text()),
    )


def parse(dialect: Dialect, group: str, name: str,
          ids: Sequence[str] = ()) -> Mapping[str, SchedulerJob]:
    cap = load(group, name)
    return dialect.parse_status(cap.stdout, cap.stderr, cap.rc, ids)


def summary(jobs: Mapping[str, SchedulerJob]) -> dict[str, tuple[str, int | None]]:
    """{id: (state, exit code)}: what a status table shows, easy to compare whole."""
    return {job_id: (job.state.value, job.exit_code) for job_id, job in jobs.items()}
