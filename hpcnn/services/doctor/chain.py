"""The order doctor checks links in: this machine, then the local queue or the cluster, then
(when asked) a probe job."""

from __future__ import annotations

from collections.abc import Callable

from hpcnn.services.doctor.base import Check, CheckResult, DoctorContext, run_checks
from hpcnn.services.doctor.local import COMMON_CHECKS, check_local_device, check_local_queue
from hpcnn.services.doctor.probe import run_probe
from hpcnn.services.doctor.remote import REMOTE_CHECKS
from hpcnn.services.session import Session


def doctor(
    session: Session,
    *,
    probe: bool = False,
    report: Callable[[CheckResult], None] = lambda r: None,
    probe_timeout: float = 300.0,
    on_state: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    checks: list[Check] = list(COMMON_CHECKS)
    checks += [check_local_queue, check_local_device] if session.is_local else REMOTE_CHECKS
    if probe:
        def check_probe_job(ctx: DoctorContext) -> CheckResult:
            return run_probe(ctx, probe_timeout, on_state)

        checks.append(check_probe_job)
    return run_checks(DoctorContext(session), checks, report)
