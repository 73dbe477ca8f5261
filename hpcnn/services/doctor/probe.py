"""Doctor's probe: a tiny job through the configured queue with the real templates, as a client
of the job engine like every other command that runs jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from hpcnn.config import Config
from hpcnn.errors import HpcnnError
from hpcnn.jobs import engine
from hpcnn.jobs.model import PROBE, JobSpec, job_python
from hpcnn.jobs.script import render_job
from hpcnn.schedulers.base import JobState
from hpcnn.services.doctor.base import CheckResult, DoctorContext, Outcome

PROBE_RUN = "doctor"


def probe_commands(cfg: Config) -> list[list[str]]:
    """What the probe job runs: where it ran, which GPUs it sees, whether nnU-Net imports."""
    gpus = (
        "if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; "
        'else echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-<unset>}"; fi'
    )
    return [
        ["hostname"],
        ["bash", "-c", gpus],
        [job_python(cfg), "-c", "import sys, nnunetv2, importlib.metadata as m; print('python', "
                                "sys.version.split()[0], 'nnunetv2', m.version('nnunetv2'))"],
    ]


def run_probe(ctx: DoctorContext, timeout: float = 300.0,
              on_state: Callable[[str], None] | None = None) -> CheckResult:
    """Submit the probe, follow it until it ends (cancelled when it does not within
    ``timeout``), and show what it printed."""
    session = ctx.session
    dialect = session.dialect
    layout = session.remote
    name = f"hpcnn-probe-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    spec = JobSpec(run=PROBE_RUN, name=name, job_dir=layout.job_dir(PROBE_RUN, name),
                   commands=probe_commands(ctx.cfg), kind=PROBE, path_env=layout.nnunet_env())
    try:
        job_id = engine.submit(session.conn, dialect, render_job(ctx.cfg, dialect, spec),
                               spec.job_dir)
    except HpcnnError as exc:
        return CheckResult("probe job", Outcome.FAIL, str(exc),
                           "read the scheduler's message above; adjust resources in cluster.yaml",
                           exit_code=exc.exit_code)
    verdict = engine.wait_for(
        session.conn, dialect, job_id, spec.job_dir, timeout=timeout, interval=1.0,
        on_change=(lambda v: on_state(f"probe job {job_id}: {v.state}")) if on_state else None,
    )
    if not verdict.state.finished:
        # Never leave a probe behind to take a GPU later on a busy cluster.
        engine.cancel(session.conn, dialect, [job_id])
    out = engine.read_log(session.conn, spec.job_dir, "out")
    err = engine.read_log(session.conn, spec.job_dir, "err", tail=5)
    lines = [line for line in out.splitlines() if not line.startswith("hpcnn: job ")]
    detail = f"job {job_id} {verdict.state} (exit {verdict.exit_code}) in {spec.job_dir}\n" + (
        "\n".join("    " + line for line in
                  lines + [f"stderr: {e}" for e in err.strip().splitlines()]))
    if verdict.state != JobState.COMPLETED:
        fix = ("the environment setup failed: fix environment.setup in cluster.yaml"
               if "environment setup failed" in verdict.detail
               else "read the job's output above; the job folder holds job.sh, out.log, err.log")
        if not verdict.state.finished:
            fix = (f"the job did not finish within {timeout:.0f} s and was cancelled; the queue "
                   "may be busy: try again later or with a longer --probe-timeout")
        return CheckResult("probe job", Outcome.FAIL, detail, fix)
    return CheckResult("probe job", Outcome.OK, detail)
