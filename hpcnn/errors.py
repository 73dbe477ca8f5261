"""The errors hpcnn reports to users, each mapped to one exit code of the shared scheme.

Exit codes (design.md): 0 done, 10 still running, 11 some failed, 12 locked by another hpcnn,
2 usage/config error, 3 connection or scheduler unreachable. Commands raise these; the CLI turns
them into a one-paragraph message and the code, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_RUNNING = 10
EXIT_FAILED = 11
EXIT_LOCKED = 12


class HpcnnError(Exception):
    """An error with a message meant for the user and a shell exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  fix: {self.hint}" if self.hint else base


class ConfigError(HpcnnError):
    """cluster.yaml (or another input file) is missing or wrong."""

    exit_code = EXIT_USAGE


class TemplateError(HpcnnError):
    """A job template is missing or does not render."""

    exit_code = EXIT_USAGE


class ConnectionFailed(HpcnnError):
    """The cluster could not be reached, or refused us."""

    exit_code = EXIT_UNREACHABLE


class RemoteCommandError(HpcnnError):
    """A remote command ran and failed; carries its output for the message."""

    exit_code = 1

    def __init__(self, message: str, *, returncode: int, stdout: str = "", stderr: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class SchedulerError(HpcnnError):
    """The scheduler refused a request (e.g. qsub rejected a job); shows its own message."""

    exit_code = 1


class SchedulerUnavailable(HpcnnError):
    """The scheduler did not answer; job states become ``unknown``, never ``failed``."""

    exit_code = EXIT_UNREACHABLE


class DataError(HpcnnError):
    """Input images or a dataset are unusable."""

    exit_code = EXIT_USAGE


class Locked(HpcnnError):
    """Another hpcnn process holds the lock of this workspace/run (cron-safe commands)."""

    exit_code = EXIT_LOCKED


class JobsActive(HpcnnError):
    """A command that must not act while a run's jobs are queued or running (``hpcnn clean``
    would pull the data from under them); exits with the "still running" code."""

    exit_code = EXIT_RUNNING
