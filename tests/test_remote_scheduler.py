"""Jobs through the real queue of the test bed, over real SSH, for the torque (Slurm's Torque
wrappers) and slurm dialects: doctor --probe, queued → running → completed with the real exit
code, exit 3, a walltime kill, a refused submission and a PATH without the scheduler."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import testbed_ssh as ssh_argv

from hpcnn.config import Config
from hpcnn.errors import SchedulerError
from hpcnn.jobs import engine as jobs
from hpcnn.jobs.model import JobSpec
from hpcnn.jobs.script import render_job
from hpcnn.remote import connect
from hpcnn.remote.base import Connection
from hpcnn.schedulers import JobState, get_dialect
from hpcnn.schedulers.detect import detect_line, parse_detection
from hpcnn.workspace import RemoteLayout

pytestmark = pytest.mark.testbed

DIALECTS = ["torque", "slurm"]
NODE_FULL = "Requested node configuration is not available"


def with_resources(cfg: Config, **changes: object) -> Config:
    return cfg.model_copy(update={"resources": cfg.resources.model_copy(update=changes)})


def submit(conn: Connection, cfg: Config, name: str, commands: Sequence[Sequence[str]],
           run: str = "tests") -> tuple[str, str]:
    """Render and submit one job; returns (scheduler id, job dir)."""
    dialect = get_dialect(cfg.cluster.scheduler)
    layout = RemoteLayout(cfg.remote_dir)
    job_dir = layout.job_dir(run, name)
    request = JobSpec(run=run, name=name, job_dir=job_dir, commands=commands,
                         path_env=layout.nnunet_env())
    return jobs.submit(conn, dialect, render_job(cfg, dialect, request), job_dir), job_dir


def follow(conn: Connection, dialect_name: str, submitted: dict[str, tuple[str, str]],
           timeout: float) -> dict[str, tuple[list[JobState], jobs.Verdict]]:
    """Poll all jobs together (one remote command per poll) until each has finished; returns
    the states each went through and its final verdict."""
    dialect = get_dialect(dialect_name)
    seen: dict[str, list[JobState]] = {name: [] for name in submitted}
    verdicts: dict[str, jobs.Verdict] = {}
    missing: dict[str, float | None] = dict.fromkeys(submitted)
    deadline = time.time() + timeout
    while len(verdicts) < len(submitted) and time.time() < deadline:
        pending = [(submitted[n][0], submitted[n][1]) for n in submitted if n not in verdicts]
        observed, answered = jobs.poll(conn, dialect, pending)
        for name, (job_id, _) in submitted.items():
            if name in verdicts:
                continue
            states = seen[name]
            verdict = jobs.decide(observed[job_id], answered=answered,
                                  previous=states[-1] if states else JobState.PENDING,
                                  first_missing_at=missing[name], grace=30)
            missing[name] = verdict.first_missing_at
            if not states or states[-1] != verdict.state:
                states.append(verdict.state)
            if verdict.state.finished:
                verdicts[name] = verdict
        time.sleep(0.5)
    assert len(verdicts) == len(submitted), f"jobs did not finish in {timeout} s: {seen}"
    return {name: (seen[name], verdicts[name]) for name in submitted}


@pytest.mark.parametrize("ssh", ["fabric", "openssh"])
@pytest.mark.parametrize("scheduler", DIALECTS)
def test_doctor_probe_passes(cluster_config, hpcnn, scheduler: str, ssh: str) -> None:
    cfg = cluster_config(scheduler, ssh)
    code, out, err = hpcnn("--config", cfg.source, "doctor", "--probe", "--probe-timeout", "120")
    assert code == 0, out + err
    assert "all checks passed" in out
    for line in ("[ok  ] ssh: hpcuser@127.0.0.1:2222", "[ok  ] remote dir:",
                 "[ok  ] cluster python: python", "[ok  ] probe job: job"):
        assert line in out, out
    assert "CUDA_VISIBLE_DEVICES=" in out or "GPU" in out


def test_doctor_auto_detects_slurm(cluster_config, testbed, hpcnn) -> None:
    cfg = cluster_config("auto", "openssh")
    code, _, err = hpcnn("--config", cfg.source, "render", "--dataset", "7", "-f", "0")
    assert code == 2 and "run `hpcnn doctor` once" in err
    code, out, err = hpcnn("--config", cfg.source, "doctor")
    assert code == 0, out + err
    assert "[ok  ] scheduler: slurm (sbatch and squeue found" in out
    # Recorded: later commands render for the detected dialect without asking the cluster.
    # render never connects: a dataset only on the cluster is named in full (DatasetNNN_Name).
    code, out, err = hpcnn("--config", cfg.source, "render", "--dataset", "7", "-f", "0")
    assert code == 2 and "no dataset '7'" in err and "does not connect" in err
    subprocess.run([*ssh_argv(testbed), "mkdir -p "
                    f"{cfg.cluster.remote_dir}/nnUNet_preprocessed/Dataset007_Spleen"], check=True)
    code, out, err = hpcnn("--config", cfg.source, "render", "--dataset", "Dataset007_Spleen",
                           "-f", "0")
    assert code == 0, err
    assert "#SBATCH --job-name=hpcnn-007-nnUNetTrainer-3d_fullres-f0-a1" in out
    assert " Dataset007_Spleen 3d_fullres 0 " in out


@pytest.mark.parametrize("scheduler", DIALECTS)
def test_queued_running_completed_and_exit_3(cluster_config, testbed, scheduler: str) -> None:
    """A job that fills the node's 2 CPUs keeps the next one queued; it then runs and
    completes with exit 0, and a job that exits 3 is failed with 3. The run's name has a
    quote, a space and ``$(...)``: it reaches the job folder as data."""
    cfg = cluster_config(scheduler, "openssh" if scheduler == "slurm" else "fabric")
    tag = uuid.uuid4().hex[:8]
    run = f"run 'x' $(cd;touch pwned-{tag})"
    with connect(cfg) as conn:
        blocker = submit(conn, with_resources(cfg, cpus=2), "blocker", [["sleep", "6"]], run)
        submitted = {
            "ok": submit(conn, cfg, "ok", [["sleep", "2"], ["true"]], run),
            "three": submit(conn, cfg, "three", [["sh", "-c", "exit 3"]], run),
        }
        result = follow(conn, scheduler, {"blocker": blocker, **submitted}, timeout=120)
        started = conn.read_text(f"{submitted['ok'][1]}/started") or ""
    states, verdict = result["ok"]
    assert states[0] == JobState.QUEUED, states
    assert JobState.RUNNING in states and states[-1] == JobState.COMPLETED, states
    assert verdict.exit_code == 0
    assert f"jobid={submitted['ok'][0]}" in started  # the job saw its own scheduler id
    three_states, three = result["three"]
    assert (three.state, three.exit_code) == (JobState.FAILED, 3), three_states
    for home in (Path.home(), Path(testbed["TESTBED_HOME"])):
        assert not (home / f"pwned-{tag}").exists()


def test_walltime_on_short_partition(cluster_config) -> None:
    """Both dialects at once (a kill takes 60-90 s): Slurm says TIMEOUT; the Torque wrapper's
    qstat only says C, so there the job's own markers tell: SIGTERM after its full walltime."""
    results = {}
    for scheduler in DIALECTS:
        cfg = with_resources(cluster_config(scheduler, "openssh"), queue="short",
                             walltime=60)
        with connect(cfg) as conn:
            results[scheduler] = (cfg, submit(conn, cfg, "too-long", [["sleep", "300"]]))
    verdicts = {}
    for scheduler, (cfg, job) in results.items():
        with connect(cfg) as conn:
            verdicts[scheduler] = follow(conn, scheduler, {"job": job}, timeout=200)["job"][1]
    assert verdicts["slurm"].state == JobState.TIMEOUT, verdicts["slurm"]
    assert verdicts["torque"].state == JobState.TIMEOUT, verdicts["torque"]
    assert verdicts["torque"].detail == "stopped at its walltime", verdicts["torque"]


@pytest.mark.parametrize("scheduler", DIALECTS)
def test_three_gpus_are_refused_with_slurms_message(cluster_config, scheduler: str) -> None:
    cfg = with_resources(cluster_config(scheduler, "fabric"), gpus=3)
    with connect(cfg) as conn, pytest.raises(SchedulerError, match=NODE_FULL) as info:
        submit(conn, cfg, "three-gpus", [["true"]])
    assert "refused job three-gpus" in str(info.value)


@pytest.mark.parametrize("scheduler", DIALECTS)
def test_scheduler_missing_from_path(cluster_config, hpcnn, testbed, scheduler: str) -> None:
    """A login shell whose PATH lacks the scheduler: detection says so, a submission is
    refused with the shell's message, and a poll leaves states unknown, never failed."""
    hidden = f"{testbed['TESTBED_HOME']}/hpcnn-tests/no-scheduler-bin"
    with connect(cluster_config(scheduler, "openssh")) as conn:  # every tool but Slurm's
        conn.run_shell(
            f"rm -rf {hidden} && mkdir -p {hidden} && hide=\" $(dpkg -L slurm-client "
            "slurm-wlm-torque | sed -n 's|^/usr/bin/||p' | tr '\\n' ' ') \" && "
            'for f in /usr/bin/*; do case "$hide" in *" ${f##*/} "*) ;; '
            f'*) ln -s "$f" {hidden}/;; esac; done')
    shell = f"/usr/bin/env PATH={hidden} /bin/bash -c"
    cfg = cluster_config(scheduler, "openssh", login_shell=shell)
    with connect(cfg) as conn:
        with pytest.raises(SchedulerError, match="no scheduler commands"):
            parse_detection(conn.run_shell(detect_line()).stdout)
        with pytest.raises(SchedulerError, match="command not found"):
            submit(conn, cfg, "no-path", [["true"]])
        observed, answered = jobs.poll(conn, get_dialect(scheduler),
                                       [("1", f"{cfg.remote_dir}/none")])
    assert not answered and observed["1"].scheduler is None
    verdict = jobs.decide(observed["1"], answered=answered, previous=JobState.RUNNING,
                          first_missing_at=None, grace=30)
    assert verdict.state == JobState.UNKNOWN
    code, out, _ = hpcnn("--config", cfg.source, "doctor")
    assert code == 3 and "[FAIL] scheduler" in out and "PATH" in out
