"""The local scheduler end to end: rendered job scripts through hpcnn's own queue, states read
the way every command reads them (scheduler + markers), across separate CLI processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from hpcnn.config import (
    Config,
    EnvironmentSection,
    LocalSection,
    ResourcesSection,
    TrainingSection,
)
from hpcnn.jobs import engine as jobs
from hpcnn.jobs.model import JobSpec
from hpcnn.jobs.script import render_job
from hpcnn.remote.local import LocalConnection
from hpcnn.schedulers import Dependency, JobState, get_dialect
from hpcnn.state import JobRow, Registry

DIALECT = get_dialect("local")


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    qdir = tmp_path / "localq"
    monkeypatch.setenv("HPCNN_LOCALQ_DIR", str(qdir))
    yield qdir
    # Never leave jobs behind: cancel whatever is still active.
    ids = [p.stem for p in (qdir / "jobs").glob("*.json")] if qdir.exists() else []
    if ids:
        LocalConnection().run(DIALECT.cancel_command(ids), check=False)


def make_cfg(root: Path, **sections: object) -> Config:
    return Config(workspace=root, **sections)


def submit(cfg: Config, name: str, commands: Sequence[Sequence[str]],
           deps: Sequence[Dependency] = ()) -> tuple[str, str]:
    job_dir = str(cfg.workspace / ".hpcnn" / "runs" / "test" / name)
    text = render_job(cfg, DIALECT, JobSpec(run="test", name=name, job_dir=job_dir,
                                               commands=commands))
    return jobs.submit(LocalConnection(), DIALECT, text, job_dir, deps), job_dir


def state_of(job_id: str, job_dir: str) -> jobs.Verdict:
    obs, answered = jobs.poll(LocalConnection(), DIALECT, [(job_id, job_dir)])
    return jobs.decide(obs[job_id], answered=answered, previous=JobState.QUEUED,
                       first_missing_at=None, grace=60)


def wait_for_file(flag: Path, then: str = "") -> list[list[str]]:
    """A job command that blocks until ``flag`` exists (tests release jobs at will)."""
    return [["bash", "-c", f"while [ ! -e {flag} ]; do sleep 0.1; done{then}"]]


def wait_until(pred: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_running_completed_behind_max_parallel(tmp_path: Path, queue: Path) -> None:
    cfg = make_cfg(tmp_path)
    flag = tmp_path / "release"
    blocker, bdir = submit(cfg, "blocker", wait_for_file(flag))
    second, sdir = submit(cfg, "second", [["echo", "hello"]])
    wait_until(lambda: state_of(blocker, bdir).state == JobState.RUNNING, what="blocker running")
    # max_parallel=1: the second job must wait its turn.
    time.sleep(1)
    assert state_of(second, sdir).state == JobState.QUEUED
    assert not Path(sdir, "started").exists()
    flag.touch()
    seen = set()

    def done() -> bool:
        seen.add(state_of(second, sdir).state)
        return JobState.COMPLETED in seen

    wait_until(done, what="second completed")
    v = state_of(second, sdir)
    assert (v.state, v.exit_code) == (JobState.COMPLETED, 0)
    assert Path(sdir, "out.log").read_text().strip().endswith("hello")
    assert state_of(blocker, bdir).state == JobState.COMPLETED


def test_max_parallel_two_runs_both(tmp_path: Path, queue: Path) -> None:
    cfg = make_cfg(tmp_path, local=LocalSection(max_parallel=2))
    flag = tmp_path / "release"
    cmd = wait_for_file(flag)
    a, adir = submit(cfg, "a", cmd)
    b, bdir = submit(cfg, "b", cmd)
    wait_until(lambda: state_of(a, adir).state == JobState.RUNNING
               and state_of(b, bdir).state == JobState.RUNNING, what="both running")
    flag.touch()
    wait_until(lambda: state_of(b, bdir).state == JobState.COMPLETED, what="b completed")


def test_exit_3_is_failed_with_3(tmp_path: Path, queue: Path) -> None:
    job, jdir = submit(make_cfg(tmp_path), "three", [["bash", "-c", "echo oops >&2; exit 3"]])
    wait_until(lambda: state_of(job, jdir).state.finished, what="finish")
    v = state_of(job, jdir)
    assert (v.state, v.exit_code) == (JobState.FAILED, 3)
    assert "oops" in v.detail


def test_setup_failure_is_failed_with_its_error(tmp_path: Path, queue: Path) -> None:
    cfg = make_cfg(tmp_path, environment=EnvironmentSection(
        setup=["source /nonexistent/conda.sh  # comment"]))
    job, jdir = submit(cfg, "setup", [["touch", str(tmp_path / "ran")]])
    wait_until(lambda: state_of(job, jdir).state.finished, what="finish")
    v = state_of(job, jdir)
    assert v.state == JobState.FAILED and v.exit_code == jobs.SETUP_FAILED_EXIT
    assert "environment setup failed" in v.detail and "/nonexistent/conda.sh" in v.detail
    assert not (tmp_path / "ran").exists()


def test_dependencies_afterok_and_afterany(tmp_path: Path, queue: Path) -> None:
    cfg = make_cfg(tmp_path, local=LocalSection(max_parallel=2))
    flag = tmp_path / "release"
    first, fdir = submit(cfg, "first", wait_for_file(flag, "; exit 1"))
    ok_dep, okdir = submit(cfg, "needs-ok", [["true"]], [Dependency(first, "afterok")])
    any_dep, anydir = submit(cfg, "needs-any", [["true"]], [Dependency(first, "afterany")])
    wait_until(lambda: state_of(first, fdir).state == JobState.RUNNING, what="first running")
    time.sleep(0.8)
    # A free slot exists (max_parallel=2) but the dependency holds them.
    assert state_of(ok_dep, okdir).state == JobState.HELD
    assert state_of(any_dep, anydir).state == JobState.HELD
    flag.touch()
    wait_until(lambda: state_of(any_dep, anydir).state == JobState.COMPLETED, what="afterany")
    v = state_of(ok_dep, okdir)
    assert v.state == JobState.CANCELLED and "dependency" in v.detail
    assert not Path(okdir, "started").exists()


def test_cancel_kills_whole_process_group(tmp_path: Path, queue: Path) -> None:
    pidfile = tmp_path / "child.pid"
    job, jdir = submit(make_cfg(tmp_path), "victim", [
        ["bash", "-c", f"sleep 300 & echo $! > {pidfile}; wait"]])
    wait_until(pidfile.exists, what="child pid")
    child = int(pidfile.read_text())
    LocalConnection().run(DIALECT.cancel_command([job]))
    wait_until(lambda: state_of(job, jdir).state == JobState.CANCELLED, what="cancelled")

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

    wait_until(gone, timeout=10, what="grandchild killed")


def test_cancel_queued_job_never_starts(tmp_path: Path, queue: Path) -> None:
    cfg = make_cfg(tmp_path)
    flag = tmp_path / "release"
    blocker, _ = submit(cfg, "blocker", wait_for_file(flag))
    waiting, wdir = submit(cfg, "waiting", [["true"]])
    LocalConnection().run(DIALECT.cancel_command([waiting]))
    flag.touch()
    time.sleep(1.0)
    assert state_of(waiting, wdir).state == JobState.CANCELLED
    assert not Path(wdir, "started").exists()


def test_walltime_sends_term_then_timeout(tmp_path: Path, queue: Path) -> None:
    cfg = make_cfg(tmp_path, resources=ResourcesSection(walltime="2s"),
                   training=TrainingSection(walltime_margin=0))
    job, jdir = submit(cfg, "slow", [["sleep", "60"]])
    wait_until(lambda: state_of(job, jdir).state.finished, timeout=30, what="walltime")
    v = state_of(job, jdir)
    assert v.state == JobState.TIMEOUT
    assert "signal=TERM" in Path(jdir, "exit_code").read_text()


def test_vanished_job_becomes_lost_after_grace_across_processes(tmp_path: Path,
                                                                queue: Path) -> None:
    """Kill the runner and the job with SIGKILL (a crashed node): no exit marker is written.
    A first CLI process sees it missing, a later one declares it lost after the grace."""
    cfg = make_cfg(tmp_path)
    job, jdir = submit(cfg, "doomed", [["sleep", "300"]])
    wait_until(lambda: state_of(job, jdir).state == JobState.RUNNING, what="running")
    rec = json.loads((queue / "jobs" / f"{job}.json").read_text())
    os.kill(rec["runner_pid"], signal.SIGKILL)
    os.killpg(rec["pgid"], signal.SIGKILL)
    registry_path = tmp_path / "state.db"
    Registry(registry_path).add(JobRow(name="doomed", run="test", kind="fold", job_dir=jdir,
                                       scheduler="local", state="running", scheduler_id=job))
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from hpcnn.jobs.engine import refresh\n"
        "from hpcnn.remote.local import LocalConnection\n"
        "from hpcnn.schedulers import get_dialect\n"
        "from hpcnn.state import Registry\n"
        "reg = Registry(Path(sys.argv[1]))\n"
        "rows = refresh(reg, LocalConnection(), get_dialect('local'), reg.jobs(), grace=2)[0]\n"
        "print(rows[0].state, rows[0].detail)\n"
    )

    def cli_process() -> str:
        return subprocess.run([sys.executable, "-c", script, str(registry_path)], check=True,
                              capture_output=True, text=True).stdout.strip()

    wait_until(lambda: not Path(f"/proc/{rec['pgid']}").exists()
               or "Z" in Path(f"/proc/{rec['pgid']}/stat").read_text().split()[2], what="dead")
    first = cli_process()
    assert first.startswith("running") and "waiting for its exit marker" in first
    time.sleep(2.2)
    second = cli_process()
    assert second.startswith("lost") and "wrote no exit marker" in second


def test_job_survives_the_submitting_process(tmp_path: Path, queue: Path) -> None:
    """Submit from a process that exits at once; a new process sees the job finish."""
    job_dir = tmp_path / "jobs" / "detached"
    script = (
        "import sys\n"
        "from hpcnn.jobs import engine as jobs\n"
        "from hpcnn.config import Config\n"
        "from hpcnn.remote.local import LocalConnection\n"
        "from hpcnn.jobs.model import JobSpec\n"
        "from hpcnn.jobs.script import render_job\n"
        "from hpcnn.schedulers import get_dialect\n"
        "d = get_dialect('local'); jd = sys.argv[1]\n"
        "t = render_job(Config(), d, JobSpec(run='r', name='detached', job_dir=jd,\n"
        "               commands=[['bash', '-c', 'sleep 2; echo survived']]))\n"
        "print(jobs.submit(LocalConnection(), d, t, jd))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(job_dir)], check=True,
                         capture_output=True, text=True, timeout=30)
    job = out.stdout.strip()
    assert state_of(job, str(job_dir)).state in (JobState.QUEUED, JobState.RUNNING)
    wait_until(lambda: state_of(job, str(job_dir)).state == JobState.COMPLETED, what="done")
    assert "survived" in (job_dir / "out.log").read_text()


def test_sigterm_before_the_walltime_is_not_a_timeout(tmp_path: Path, queue: Path) -> None:
    """A job killed early (e.g. by an administrator) with SIGTERM is failed, not timeout,
    when the scheduler does not say why: the job's own clock is below its walltime."""
    cfg = make_cfg(tmp_path, resources=ResourcesSection(walltime="1h"))
    job, jdir = submit(cfg, "killed", [["sleep", "60"]])
    wait_until(lambda: Path(jdir, "started").exists(), what="started")
    pid = int(dict(line.split("=", 1) for line in
                   Path(jdir, "started").read_text().splitlines())["pid"])
    time.sleep(0.5)
    os.killpg(pid, signal.SIGTERM)
    wait_until(lambda: state_of(job, jdir).state.finished, what="finish")
    v = state_of(job, jdir)
    assert v.state == JobState.FAILED and "stopped by SIGTERM" in v.detail


def test_resubmission_into_the_same_folder_ignores_old_markers(tmp_path: Path,
                                                                queue: Path) -> None:
    cfg = make_cfg(tmp_path)
    job, jdir = submit(cfg, "again", [["bash", "-c", "exit 3"]])
    wait_until(lambda: state_of(job, jdir).state == JobState.FAILED, what="first attempt")
    flag = tmp_path / "release"
    job2, jdir2 = submit(cfg, "again", wait_for_file(flag))
    assert jdir2 == jdir
    wait_until(lambda: Path(jdir, "started").exists(), what="second started")
    v = state_of(job2, jdir)
    assert (v.state, v.exit_code, v.detail) == (JobState.RUNNING, None, "")
    flag.touch()
    wait_until(lambda: state_of(job2, jdir).state == JobState.COMPLETED, what="second done")


def test_max_parallel_counts_running_jobs_whatever_their_own_limit(tmp_path: Path,
                                                                   queue: Path) -> None:
    """Two jobs that allow 2 at once run; when the first ends, a job that allows only 1 at
    once must still wait for the second."""
    wide = make_cfg(tmp_path, local=LocalSection(max_parallel=2))
    flag_a, flag_c = tmp_path / "a", tmp_path / "c"
    a, adir = submit(wide, "a", wait_for_file(flag_a))
    c, cdir = submit(wide, "c", wait_for_file(flag_c))
    wait_until(lambda: state_of(c, cdir).state == JobState.RUNNING, what="both running")
    flag_a.touch()
    wait_until(lambda: state_of(a, adir).state == JobState.COMPLETED, what="a done")
    b, bdir = submit(make_cfg(tmp_path), "b", [["true"]])
    time.sleep(1.2)
    assert state_of(b, bdir).state == JobState.QUEUED
    flag_c.touch()
    wait_until(lambda: state_of(b, bdir).state == JobState.COMPLETED, what="b done")
