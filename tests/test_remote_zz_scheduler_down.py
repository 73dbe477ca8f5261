"""slurmctld stopped: status says ``unknown``, never ``failed``, and doctor names the scheduler.

This stops the test bed's controller (``scontrol shutdown slurmctld``) and brings it back with
tests/testbed/up.sh, so it sits in the last file pytest collects (zz) and restores the test
bed in a finally, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runs_helper import record_run

from hpcnn.errors import SchedulerUnavailable
from hpcnn.jobs import engine as jobs
from hpcnn.remote import connect
from hpcnn.schedulers import JobState, get_dialect

pytestmark = pytest.mark.testbed

UP = Path(__file__).resolve().parent / "testbed" / "up.sh"


def controller_up() -> bool:
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    return "is UP" in ping.stdout


@pytest.fixture(scope="module")
def slurmctld_stopped(testbed) -> Iterator[None]:
    from conftest import need

    need(os.geteuid() == 0, "stopping slurmctld needs root (the test bed's SlurmUser)")
    subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True)
    try:
        deadline = time.time() + 30
        while controller_up() and time.time() < deadline:
            time.sleep(0.5)
        assert not controller_up(), "slurmctld did not stop"
        yield
    finally:
        subprocess.run([str(UP)], check=True, capture_output=True, timeout=300)
        assert controller_up()


@pytest.mark.parametrize("scheduler", ["slurm", "torque"])
def test_scheduler_down_means_unknown(cluster_config, hpcnn, slurmctld_stopped,
                                      scheduler: str) -> None:
    cfg = cluster_config(scheduler, "openssh")
    dialect = get_dialect(scheduler)
    with connect(cfg) as conn:
        res = conn.run(dialect.status_command(["1"]), check=False)
        with pytest.raises(SchedulerUnavailable) as info:
            dialect.parse_status(res.stdout, res.stderr, res.returncode, ["1"])
        observed, answered = jobs.poll(conn, dialect, [("1", f"{cfg.remote_dir}/none")])
    assert "slurm" in str(info.value).lower() or "Problem loading jobs" in str(info.value)
    assert not answered
    verdict = jobs.decide(observed["1"], answered=answered, previous=JobState.RUNNING,
                          first_missing_at=None, grace=0)
    assert verdict.state == JobState.UNKNOWN
    code, out, _ = hpcnn("--config", cfg.source, "doctor")
    assert code == 3 and "[FAIL] scheduler" in out and "did not answer" in out


def test_hpcnn_status_with_the_controller_down_is_unknown_exit_3(cluster_config, hpcnn,
                                                                 slurmctld_stopped) -> None:
    """A run whose fold was running: `hpcnn status` says unknown (never failed) and exits 3."""
    import json

    from hpcnn.jobs.model import FOLD, Run, job_name
    from hpcnn.services.session import Session
    from hpcnn.state import JobRow

    cfg = cluster_config("torque", "openssh")
    cfg.workspace.mkdir(parents=True, exist_ok=True)
    run = Run("Dataset501_Tiny", "hpcnnTinyTrainer", "nnUNetPlans", "3d_fullres")
    with Session(cfg) as session:
        record_run(session, run, folds=[0])
        name = job_name(run.id, 0)
        session.registry.add(JobRow(name=name, run=run.id, kind=FOLD, fold=0, scheduler="torque",
                                    job_dir=session.remote.job_dir(run.id, name),
                                    state="running", scheduler_id="4242",
                                    submitted_at=time.time()))
    code, out, _ = hpcnn("--config", cfg.source, "status", "--json")
    status = json.loads(out)
    assert code == 3 and status["exit_code"] == 3 and not status["scheduler_answered"], out
    assert [f["state"] for f in status["folds"]] == ["unknown"]
    code, out, _ = hpcnn("--config", cfg.source, "status")
    assert code == 3 and "the scheduler did not answer" in out
