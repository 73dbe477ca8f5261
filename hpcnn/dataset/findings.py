"""What ``hpcnn dataset import`` and ``hpcnn dataset check`` find: one record, each about one file.

A finding is an ``error`` (the import stops; nnU-Net would crash, or train on something other
than what the user meant), a ``warning`` (it works, but probably not as wanted; under
``--strict`` the import stops too), a ``fix`` the import made, or a ``notice``. Every stage adds
findings instead of stopping at the first problem, so a user fixes everything in one round.

``file`` names the file as the user knows it (relative to the import source or the dataset
folder; ``""`` or ``dataset.json`` for the dataset as a whole) and ``hint`` says how to fix an
error or warning. ``code`` is a stable name for the problem: the check sets one on every finding,
and its codes and JSON fields are an interface that scripts and ``hpcnn preprocess`` rely on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcnn.errors import DataError

Level = Literal["error", "warning", "fix", "notice"]
LEVELS: tuple[Level, ...] = ("error", "warning", "fix", "notice")

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class Finding:
    """One thing worth telling the user about one file."""

    level: Level
    file: str
    message: str
    hint: str = ""
    code: str = ""

    def line(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message

    def to_json(self) -> dict[str, str]:
        return {"severity": self.level, "file": self.file, "code": self.code,
                "message": self.message, "hint": self.hint}


def error(file: str, message: str, hint: str = "", *, code: str = "") -> Finding:
    return Finding("error", file, message, hint, code)


def warning(file: str, message: str, hint: str = "", *, code: str = "") -> Finding:
    return Finding("warning", file, message, hint, code)


def fix(file: str, message: str, *, code: str = "") -> Finding:
    return Finding("fix", file, message, code=code)


def notice(file: str, message: str, *, code: str = "") -> Finding:
    return Finding("notice", file, message, code=code)


def fix_line(hint: str, indent: int) -> list[str]:
    """The ``fix:`` line under a finding (none without a hint)."""
    return [" " * indent + f"fix: {hint}"] if hint else []


def shorten(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, then how many more."""
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def _by_message(findings: Iterable[Finding]) -> dict[tuple[Level, str, str], list[str]]:
    """The files of each (level, message, hint), in order of first appearance."""
    groups: dict[tuple[Level, str, str], list[str]] = {}
    for f in findings:
        groups.setdefault((f.level, f.message, f.hint), []).append(f.file)
    return groups


# --------------------------------------------------------------------------------------------
# The import: findings grouped by message (the same problem in forty files is one line)


class ImportFailed(DataError):
    """The import stopped; ``findings`` are the problems that stopped it."""

    def __init__(self, message: str, findings: list[Finding], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.findings = findings


def raise_if_errors(findings: Iterable[Finding], *, strict: bool = False) -> None:
    """Raise ImportFailed naming every file with an error (or, with ``strict``, a warning)."""
    stopping = [f for f in findings if f.level == "error" or (strict and f.level == "warning")]
    if not stopping:
        return
    suffix = " (--strict)" if strict and any(f.level == "warning" for f in stopping) else ""
    if len(stopping) == 1:
        only = stopping[0]
        raise ImportFailed(only.line() + suffix, stopping, hint=only.hint or None)
    lines = [f"{len(stopping)} problems{suffix}; nothing was imported:"]
    for (_, message, hint), files in _by_message(stopping).items():
        named = ", ".join(f for f in files if f)
        lines.append(f"  {named}: {message}" if len(files) == 1 and named
                     else f"  {message}" + (f" ({named})" if named else ""))
        lines += fix_line(hint, 4)
    raise ImportFailed("\n".join(lines), stopping)


def summary_lines(findings: Iterable[Finding]) -> list[tuple[Level, str]]:
    """Findings grouped by level and identical message, for printing: the same notice about
    forty files is one line naming them (the first five, then a count)."""
    groups = _by_message(findings)
    out: list[tuple[Level, str]] = []
    for level in LEVELS:
        for (lvl, message, hint), files in groups.items():
            if lvl != level:
                continue
            named = [f for f in files if f]
            if len(named) > 1:
                text = f"{message} ({len(named)} files: {shorten(named)})"
            elif named:
                text = f"{named[0]}: {message}"
            else:
                text = message
            out.append((level, "\n".join([text, *fix_line(hint, 4)])))
    return out


# --------------------------------------------------------------------------------------------
# The check: findings grouped by file, each with its code


@dataclass
class CheckReport:
    """Everything one check found, plus what ``preprocess`` needs to know about the cases.

    ``cases`` are the training case ids nnU-Net will see (sorted); ``max_case_voxels`` and
    ``channels`` size preprocessing workers to the memory they need.
    """

    dataset: Path
    problems: list[Finding] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    max_case_voxels: int = 0
    channels: int = 1

    def add(self, problems: Iterable[Finding]) -> None:
        self.problems.extend(problems)

    @property
    def errors(self) -> list[Finding]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [p for p in self.problems if p.level == "warning"]

    def sorted(self) -> list[Finding]:
        """dataset.json first, then folders and files by name; errors before warnings."""
        return sorted(self.problems, key=lambda p: (p.file != DATASET_JSON, p.file,
                                                    p.level != "error", p.code, p.message))

    def to_json(self) -> list[dict[str, Any]]:
        """The ``--json`` output: a list of {severity, file, code, message, hint}."""
        return [p.to_json() for p in self.sorted()]

    def summary(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        return (f"{self.dataset.name}: {len(self.cases)} training case(s), "
                f"{n_err} error(s), {n_warn} warning(s)")

    def grouped(self) -> list[tuple[str, list[Finding]]]:
        """Problems by file, in report order."""
        groups: dict[str, list[Finding]] = {}
        for p in self.sorted():
            groups.setdefault(p.file, []).append(p)
        return list(groups.items())

    def as_text(self, *, errors_only: bool = False,
                style: Callable[[str, str], str] | None = None) -> str:
        """The plain-text report (also the message when ``preprocess`` refuses a dataset).
        ``style(text, part)`` may dress a file name (part ``"file"``) or a level (its name)."""
        dress = style or (lambda text, part: text)
        lines = []
        for file, problems in self.grouped():
            shown = [p for p in problems if p.level == "error" or not errors_only]
            if not shown:
                continue
            lines.append(dress(file, "file"))
            for p in shown:
                lines.append(f"  {dress(p.level, p.level)} [{p.code}] {p.message}")
                lines += fix_line(p.hint, 6)
        return "\n".join(lines)
