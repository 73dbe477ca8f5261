"""What an import found: errors, warnings, fixes it made and notices, each about one file.

Every stage of the import (pairing, reading headers, mapping labels, writing) adds findings
instead of stopping at the first problem, so a user fixes everything in one round. Errors (and
warnings under ``--strict``) stop the import before anything is renamed into place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from hpcnn.errors import DataError

Level = Literal["error", "warning", "fix", "notice"]
LEVELS: tuple[Level, ...] = ("error", "warning", "fix", "notice")


@dataclass(frozen=True)
class Finding:
    """One thing worth telling the user. ``file`` is the source file as the user names it
    (relative to the import source), or ``""`` for the dataset as a whole; ``hint`` says how to
    fix an error or warning."""

    level: Level
    file: str
    message: str
    hint: str | None = None

    def line(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


def error(file: str, message: str, hint: str | None = None) -> Finding:
    return Finding("error", file, message, hint)


def warning(file: str, message: str, hint: str | None = None) -> Finding:
    return Finding("warning", file, message, hint)


def fix(file: str, message: str) -> Finding:
    return Finding("fix", file, message)


def notice(file: str, message: str) -> Finding:
    return Finding("notice", file, message)


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
        raise ImportFailed(only.line() + suffix, stopping, hint=only.hint)
    groups: dict[tuple[str, str | None], list[str]] = {}
    for f in stopping:
        groups.setdefault((f.message, f.hint), []).append(f.file)
    lines = [f"{len(stopping)} problems{suffix}; nothing was imported:"]
    for (message, hint), files in groups.items():
        named = ", ".join(f for f in files if f)
        lines.append(f"  {named}: {message}" if len(files) == 1 and named
                     else f"  {message}" + (f" ({named})" if named else ""))
        if hint:
            lines.append(f"    fix: {hint}")
    raise ImportFailed("\n".join(lines), stopping)


def shorten(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, then how many more."""
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


def summary_lines(findings: Iterable[Finding]) -> list[tuple[Level, str]]:
    """Findings grouped by level and identical message, for printing: the same notice about
    forty files is one line naming them (the first five, then a count)."""
    groups: dict[tuple[Level, str, str | None], list[str]] = {}
    for f in findings:
        groups.setdefault((f.level, f.message, f.hint), []).append(f.file)
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
            if hint:
                text += f"\n    fix: {hint}"
            out.append((level, text))
    return out
