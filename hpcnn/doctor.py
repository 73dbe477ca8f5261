"""``hpcnn doctor``: check every link of the chain and say which one is broken and how to fix it.

Checks run in order; a check whose prerequisite failed is not run (its line says so), so the
report's first failure is the one to fix. The same list serves the local backend and a cluster:
cluster checks (SSH, login shell, dialect detection, remote versions) live in
``hpcnn.doctor_remote``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from hpcnn.config import Config
from hpcnn.errors import EXIT_UNREACHABLE, HpcnnError
from hpcnn.remote.base import Connection

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


@dataclass
class DoctorContext:
    """What checks share: the config, the one connection, and facts found along the way."""

    cfg: Config
    connect: Callable[[], Connection]
    facts: dict[str, str] = field(default_factory=dict)
    _conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


Check = Callable[[DoctorContext], CheckResult]


def local_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python(ctx: DoctorContext) -> CheckResult:
    version = ".".join(map(str, sys.version_info[:3]))
    return CheckResult("python", Outcome.OK, f"{version} ({sys.executable})")


def check_local_nnunet(ctx: DoctorContext) -> CheckResult:
    version = local_version("nnunetv2")
    if version is None:
        outcome = Outcome.FAIL if ctx.cfg.cluster.is_local else Outcome.WARN
        return CheckResult(
            "nnunetv2 (this machine)", outcome, "not installed",
            'pip install "hpcnn[nnunet]" (needed here to import datasets, preprocess, predict)',
        )
    ctx.facts["local_nnunet"] = version
    return CheckResult("nnunetv2 (this machine)", Outcome.OK, version)


def check_workspace(ctx: DoctorContext) -> CheckResult:
    ws = ctx.cfg.workspace
    try:
        ws.mkdir(parents=True, exist_ok=True)
        probe = ws / f".hpcnn-doctor-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return CheckResult("workspace", Outcome.FAIL, f"{ws}: {exc.strerror}",
                           "set `workspace:` in cluster.yaml to a folder you can write")
    free_gb = shutil.disk_usage(ws).free / 1e9
    detail = f"{ws} ({free_gb:.1f} GB free)"
    if free_gb < MIN_FREE_GB:
        return CheckResult("workspace", Outcome.WARN, detail,
                           f"less than {MIN_FREE_GB:.0f} GB free: nnU-Net data and checkpoints "
                           "need room")
    return CheckResult("workspace", Outcome.OK, detail)


def check_local_queue(ctx: DoctorContext) -> CheckResult:
    from hpcnn.localq import queue_dir
    from hpcnn.schedulers import get_dialect

    dialect = get_dialect("local")
    res = ctx.conn.run(dialect.status_command([]), check=False)
    if not res.ok:
        return CheckResult("local scheduler", Outcome.FAIL, res.stderr.strip()[-300:],
                           "check that the hpcnn package is importable by this Python")
    running = len([line for line in res.stdout.splitlines() if line.strip()])
    return CheckResult(
        "local scheduler", Outcome.OK,
        f"queue {queue_dir()}, {running} job(s) active, max_parallel "
        f"{ctx.cfg.local.max_parallel}",
    )


def probe_commands(cfg: Config) -> list[list[str]]:
    """What the probe job runs: where it ran, which GPUs it sees, whether nnU-Net imports."""
    python = sys.executable if cfg.cluster.is_local and not cfg.environment.setup else "python3"
    gpus = (
        "if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; "
        'else echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>}"; fi'
    )
    return [
        ["hostname"],
        ["bash", "-c", gpus],
        [python, "-c", "import sys, nnunetv2, importlib.metadata as m; print('python', "
                       "sys.version.split()[0], 'nnunetv2', m.version('nnunetv2'))"],
    ]


def run_probe(ctx: DoctorContext, timeout: float = 300.0,
              on_state: Callable[[str], None] | None = None) -> CheckResult:
    """Submit a tiny job through the configured queue with the real templates and wait for it."""
    from hpcnn import jobs
    from hpcnn.render import JobRequest, render_job
    from hpcnn.schedulers import get_dialect
    from hpcnn.workspace import RemoteLayout

    name = ctx.facts.get("dialect") or ctx.cfg.cluster.scheduler
    dialect = get_dialect(name)
    layout = RemoteLayout(ctx.facts.get("remote_dir", ctx.cfg.remote_dir))
    job = f"hpcnn-probe-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    job_dir = layout.job_dir("doctor", job)
    request = JobRequest(run="doctor", job=job, job_dir=job_dir,
                         commands=probe_commands(ctx.cfg), path_env=layout.nnunet_env())
    try:
        job_id = jobs.submit(ctx.conn, dialect, render_job(ctx.cfg, dialect, request), job_dir)
    except HpcnnError as exc:
        return CheckResult("probe job", Outcome.FAIL, str(exc),
                           "read the scheduler's message above; adjust resources in cluster.yaml")
    verdict = jobs.wait_for(
        ctx.conn, dialect, job_id, job_dir, timeout=timeout, interval=1.0,
        on_change=(lambda v: on_state(f"probe job {job_id}: {v.state}")) if on_state else None,
    )
    if not verdict.state.finished:
        # Never leave a probe behind to take a GPU later on a busy cluster.
        jobs.cancel(ctx.conn, dialect, [job_id])
    out = ctx.conn.read_text(f"{job_dir}/out.log") or ""
    err = ctx.conn.read_text(f"{job_dir}/err.log") or ""
    lines = [line for line in out.splitlines() if not line.startswith("hpcnn: job ")]
    detail = f"job {job_id} {verdict.state} (exit {verdict.exit_code}) in {job_dir}\n" + "\n".join(
        "    " + line for line in lines + [f"stderr: {e}" for e in err.strip().splitlines()[-5:]]
    )
    if verdict.state.value != "completed":
        fix = ("the environment setup failed: fix environment.setup in cluster.yaml"
               if "environment setup failed" in verdict.detail
               else "read the job's output above; the job folder holds job.sh, out.log, err.log")
        if not verdict.state.finished:
            fix = (f"the job did not finish within {timeout:.0f} s and was cancelled; the queue "
                   "may be busy: try again later or with a longer --probe-timeout")
        return CheckResult("probe job", Outcome.FAIL, detail, fix)
    return CheckResult("probe job", Outcome.OK, detail)


COMMON_CHECKS: list[Check] = [check_python, check_local_nnunet, check_workspace]
"""This machine's links, checked first whatever the scheduler."""


UNREACHABLE_CHECKS = ("ssh", "scheduler")
"""Links whose failure means the cluster cannot be reached: exit 3, as for every command."""


def exit_code(results: list[CheckResult]) -> int:
    """0 when nothing failed; 3 when the cluster or its scheduler is unreachable; else 1."""
    failed = [r for r in results if r.outcome == Outcome.FAIL]
    if not failed:
        return 0
    return EXIT_UNREACHABLE if failed[0].name.startswith(UNREACHABLE_CHECKS) else 1


def run_checks(
    cfg: Config,
    connect: Callable[[], Connection],
    *,
    probe: bool = False,
    report: Callable[[CheckResult], None] = lambda r: None,
    probe_timeout: float = 300.0,
    on_state: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Run the checks in order; after the first failure the rest are skipped."""
    ctx = DoctorContext(cfg, connect)
    checks: list[Check] = list(COMMON_CHECKS)
    if cfg.cluster.is_local:
        checks.append(check_local_queue)
    else:  # SSH, login shell, remote dir, scheduler, remote versions
        from hpcnn.doctor_remote import REMOTE_CHECKS

        checks += REMOTE_CHECKS
    if probe:
        def check_probe_job(c: DoctorContext) -> CheckResult:
            return run_probe(c, probe_timeout, on_state)

        checks.append(check_probe_job)
    results: list[CheckResult] = []
    failed: str | None = None
    try:
        for check in checks:
            if failed:
                name = getattr(check, "__name__", "probe job").removeprefix("check_")
                result = CheckResult(name.replace("_", " "), Outcome.SKIP,
                                     f"not checked: {failed} failed")
            else:
                try:
                    result = check(ctx)
                except HpcnnError as exc:
                    result = CheckResult(getattr(check, "__name__", "check"), Outcome.FAIL,
                                         str(exc))
                if result.outcome == Outcome.FAIL:
                    failed = result.name
            results.append(result)
            report(result)
    finally:
        ctx.close()
    return results
