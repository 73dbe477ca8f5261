"""What ``hpcnn dataset check`` reports: problems with a stable code, grouped by file.

A problem is an ``error`` (nnU-Net would crash, or train on something other than what the user
meant) or a ``warning`` (it trains, but the result is probably not what was wanted). Each one
names the file (relative to the dataset folder) and says how to fix it. The ``code`` values and
the JSON fields are a stable interface: scripts and ``hpcnn preprocess`` rely on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]

DATASET_JSON = "dataset.json"


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one file (``file`` is ``dataset.json`` or a folder for problems of
    the dataset as a whole)."""

    file: str
    severity: Severity
    code: str
    message: str
    hint: str = ""

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "file": self.file, "code": self.code,
                "message": self.message, "hint": self.hint}


def error(file: str, code: str, message: str, hint: str = "") -> Problem:
    return Problem(file, "error", code, message, hint)


def warning(file: str, code: str, message: str, hint: str = "") -> Problem:
    return Problem(file, "warning", code, message, hint)


@dataclass
class CheckReport:
    """Everything one check found, plus what ``preprocess`` needs to know about the cases.

    ``cases`` are the training case ids nnU-Net will see (sorted); ``max_case_voxels`` and
    ``channels`` size preprocessing workers to the memory they need.
    """

    dataset: Path
    problems: list[Problem] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    max_case_voxels: int = 0
    channels: int = 1

    def add(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def sorted(self) -> list[Problem]:
        """dataset.json first, then folders and files by name; errors before warnings."""
        return sorted(self.problems, key=lambda p: (p.file != DATASET_JSON, p.file,
                                                    p.severity != "error", p.code, p.message))

    def to_json(self) -> list[dict[str, Any]]:
        """The ``--json`` output: a list of {severity, file, code, message, hint}."""
        return [p.to_json() for p in self.sorted()]

    def summary(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        return (f"{self.dataset.name}: {len(self.cases)} training case(s), "
                f"{n_err} error(s), {n_warn} warning(s)")

    def grouped(self) -> list[tuple[str, list[Problem]]]:
        """Problems by file, in report order."""
        groups: dict[str, list[Problem]] = {}
        for p in self.sorted():
            groups.setdefault(p.file, []).append(p)
        return list(groups.items())

    def as_text(self, *, errors_only: bool = False) -> str:
        """The plain-text report (also the message when ``preprocess`` refuses a dataset)."""
        lines = []
        for file, problems in self.grouped():
            shown = [p for p in problems if p.severity == "error" or not errors_only]
            if not shown:
                continue
            lines.append(file)
            for p in shown:
                lines.append(f"  {p.severity} [{p.code}] {p.message}")
                if p.hint:
                    lines.append(f"      fix: {p.hint}")
        return "\n".join(lines)

