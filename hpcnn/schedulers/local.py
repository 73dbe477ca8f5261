"""The ``local`` dialect: hpcnn's own queue on this machine (hpcnn.schedulers.localq), driven
exactly like a cluster scheduler — submit, one status call for N jobs, cancel — so services
never branch."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.schedulers.base import Dependency, Dialect, JobState, SchedulerJob

_STATES = {
    "queued": JobState.QUEUED,
    "held": JobState.HELD,
    "running": JobState.RUNNING,
    "completed": JobState.COMPLETED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
    "timeout": JobState.TIMEOUT,
}


class LocalDialect(Dialect):
    name = "local"
    max_job_name = 200
    job_id_variables = ("HPCNN_LOCAL_JOBID",)

    def _base(self) -> list[str]:
        return [sys.executable, "-m", "hpcnn.schedulers.localq"]

    def submit_command(self, script: str, *, dependencies: Sequence[Dependency] = ()) -> list[str]:
        argv = [*self._base(), "submit"]  # starts in the submitting folder, like qsub
        for dep in dependencies:
            argv += ["--after", f"{dep.kind}:{dep.job_id}"]
        return [*argv, script]

    def parse_submit(self, stdout: str) -> str:
        text = stdout.strip()
        if not text.isdigit():
            raise SchedulerError(f"the local queue did not return a job id: {text!r}")
        return text

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        return [*self._base(), "status", *job_ids]

    def parse_status(
        self, stdout: str, stderr: str, returncode: int, job_ids: Sequence[str]
    ) -> Mapping[str, SchedulerJob]:
        if returncode != 0:
            raise SchedulerUnavailable(f"the local queue did not answer: {stderr.strip()}")
        jobs = {}
        for line in stdout.splitlines():
            parts = line.split("|")
            if len(parts) < 4:
                continue
            job_id, raw, code, reason = parts[:4]
            jobs[job_id] = SchedulerJob(
                job_id=job_id,
                state=_STATES.get(raw, JobState.UNKNOWN),
                exit_code=int(code) if code.lstrip("-").isdigit() else None,
                reason=reason or None,
                raw_state=raw,
            )
        return jobs

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        return [*self._base(), "cancel", *job_ids]


DIALECT = LocalDialect
