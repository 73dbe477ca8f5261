"""What doctor's checks share: their result, the context they run in, and the runner.

Checks run in order; a check whose prerequisite failed is not run (its line says so), so the
report's first failure is the one to fix. A check that raises an HpcnnError fails with that
error's own exit code (a connection dropped in the middle of any check is exit 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from hpcnn.errors import EXIT_UNREACHABLE, HpcnnError
from hpcnn.services.session import Session

MIN_FREE_GB = 5.0


class Outcome(str, Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class CheckResult:
    name: str
    outcome: Outcome
    detail: str = ""
    fix: str = ""
    exit_code: int = 1
    """The command's exit code when this is the first failure (3: cluster unreachable)."""


def unreachable(name: str, detail: str, fix: str = "") -> CheckResult:
    """A failure that means the cluster or its scheduler cannot be reached (exit 3)."""
    return CheckResult(name, Outcome.FAIL, detail, fix, exit_code=EXIT_UNREACHABLE)


def failed(name: str, exc: HpcnnError) -> CheckResult:
    """A check's error as its result, keeping the error's own exit code and fix."""
    message, _, _ = str(exc).partition("\n  fix: ")
    return CheckResult(name, Outcome.FAIL, message, exc.hint or "", exit_code=exc.exit_code)


@dataclass
class DoctorContext:
    """What checks share: the command's session (its one connection) and facts found on the
    way (the detected dialect, the absolute remote dir, the local nnunetv2 version)."""

    session: Session
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def cfg(self):  # noqa: ANN201 - Config, as the session holds it
        return self.session.cfg


Check = Callable[[DoctorContext], CheckResult]


def check_title(check: Check) -> str:
    return getattr(check, "__name__", "check").removeprefix("check_").replace("_", " ")


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed, else the first failure's own code."""
    failures = [r for r in results if r.outcome == Outcome.FAIL]
    return failures[0].exit_code if failures else 0


def run_checks(ctx: DoctorContext, checks: Sequence[Check],
               report: Callable[[CheckResult], None] = lambda r: None) -> list[CheckResult]:
    """Run the checks in order; after the first failure the rest are skipped."""
    results: list[CheckResult] = []
    first_failure: str | None = None
    for check in checks:
        if first_failure:
            result = CheckResult(check_title(check), Outcome.SKIP,
                                 f"not checked: {first_failure} failed")
        else:
            try:
                result = check(ctx)
            except HpcnnError as exc:
                result = failed(check_title(check), exc)
            if result.outcome == Outcome.FAIL:
                first_failure = result.name
        results.append(result)
        report(result)
    return results
