"""The experiment's job graph on the test bed's real schedulers: a 3d_lowres + cascade
experiment with find_best submitted through hpcnn.jobs, its dependencies read back from each
scheduler's own listing (Slurm's squeue for Slurm and for its Torque wrappers, whose qstat shows
no dependencies; Grid Engine's ``qstat -j``), then a failed 3d_lowres fold: the cascade and
find_best never train. No nnU-Net runs: every 3d_lowres job fails in its environment setup
(exit 97) and nothing else gets past its dependencies, so the whole test costs seconds of CPU.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import need
from conftest import testbed_ssh as ssh_argv

from hpcnn.config import Config, load_config_file
from hpcnn.jobs import engine
from hpcnn.jobs.experiment import Experiment
from hpcnn.jobs.graph import build_graph
from hpcnn.jobs.model import BLOCKED_EXIT, FIND_BEST, FOLD, JobSpec, job_name
from hpcnn.jobs.plan import make_plan
from hpcnn.jobs.submit import Submission
from hpcnn.remote.base import Connection
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.services.train import TrainOptions, anchor_remote_dir
from hpcnn.state import JobRow

pytestmark = pytest.mark.testbed

LOWRES_FAILS = 'case "$HPCNN_JOB_DIR" in */*-3d_lowres/*) false ;; esac'
"""environment.setup: every 3d_lowres job fails before it runs anything (exit 97)."""

_DEP = re.compile(r"after\w*:(\d+)")


def graph_config(cluster_config, testbed: dict[str, str], scheduler: str) -> Config:
    if scheduler == "sge":
        need("TESTBED_SGE_USER" in testbed, "the test bed has no Grid Engine account")
        cfg = cluster_config("sge", "openssh", alias=False, user=testbed["TESTBED_SGE_USER"])
    else:
        cfg = cluster_config(scheduler, "openssh")
    path = Path(str(cfg.source))
    data = yaml.safe_load(path.read_text())
    small = {"cpus": 1, "mem": "1gb" if scheduler == "sge" else "100mb", "walltime": "0:05:00"}
    data["resources"].update(mem=small["mem"], find_best=small, prep=small)
    data["environment"]["setup"] = [LOWRES_FAILS]
    data.setdefault("training", {}).update(max_resubmits=0, find_best=True)
    path.write_text(yaml.safe_dump(data))
    return load_config_file(path)


def listed_dependencies(conn: Connection, scheduler: str, ids: list[str]) -> dict[str, set[str]]:
    """What each job waits for, as the scheduler itself lists it."""
    if scheduler == "sge":
        out = conn.run(["qstat", "-j", ",".join(ids)], check=False).stdout
        found: dict[str, set[str]] = {}
        for block in re.split(r"^=+$", out, flags=re.M):
            number = re.search(r"^job_number:\s+(\d+)", block, re.M)
            if number:
                req = re.search(r"^jid_predecessor_list \(req\):\s+(\S+)", block, re.M)
                found[number.group(1)] = set(req.group(1).split(",")) if req else set()
        return found
    out = conn.run(["squeue", "-h", "-t", "all", "-o", "%i|%E", "-j", ",".join(ids)]).stdout
    return {job: set(_DEP.findall(deps)) for job, _, deps in
            (line.partition("|") for line in out.splitlines() if "|" in line)}


def wait_running(conn: Connection, session: Session, job_id: str, job_dir: str) -> None:
    """Until the blocker runs (the test bed's queue is shared with other tests)."""
    deadline = time.time() + 240
    while time.time() < deadline:
        observed, _ = engine.poll(conn, session.dialect, [(job_id, job_dir)])
        sched = observed[job_id].scheduler
        if sched is not None and sched.state == JobState.RUNNING:
            return
        time.sleep(0.5)
    pytest.fail(f"the blocker job {job_id} did not start in 240 s")


@pytest.mark.parametrize("scheduler", ["slurm", "torque", "sge"])
def test_the_cascade_graph_as_each_scheduler_holds_it(cluster_config, testbed, scheduler: str,
                                                      tmp_path: Path) -> None:
    cfg = graph_config(cluster_config, testbed, scheduler)
    exp = Experiment("Dataset501_Liver", "nnUNetTrainer", "nnUNetPlans",
                     ("3d_lowres", "3d_cascade_fullres"), (0, 1, 2, 3, 4))
    rows: list[JobRow] = []
    with Session(cfg) as session:
        conn = session.conn
        try:
            anchor_remote_dir(session)  # the guards read the needed jobs' folders by path
            # A job filling both slots, so that the graph stays queued while it is read back.
            blocker_dir = session.remote.job_dir("tests", "blocker")
            blocker = engine.submit(conn, session.dialect, render(cfg, session, JobSpec(
                run="tests", name="blocker", job_dir=blocker_dir, commands=[["sleep", "300"]],
                resources=cfg.resources.model_copy(update={"cpus": 2}))), blocker_dir)
            rows.append(JobRow(name="blocker", run="tests", kind="x", job_dir=blocker_dir,
                               scheduler=scheduler, state="queued", scheduler_id=blocker))
            wait_running(conn, session, blocker, blocker_dir)
            graph = build_graph(cfg, exp, remote_prep=False, find_best=True)
            plan = make_plan(graph, [], TrainOptions(), 1, set())
            rows += Submission(session, cfg, plan, lambda _: None).run()
            ids = {r.name: r.scheduler_id or "" for r in rows}
            lowres = [ids[job_name(exp.run("3d_lowres").id, f)] for f in range(5)]
            cascade = [ids[job_name(exp.run("3d_cascade_fullres").id, f)] for f in range(5)]
            best = ids[job_name(exp.id, None, 1, FIND_BEST)]
            listed = listed_dependencies(conn, scheduler, [*lowres, *cascade, best])
            assert listed == {**{i: set() for i in lowres},
                              **{i: set(lowres) for i in cascade},
                              best: set(lowres + cascade)}, listed
            engine.cancel(conn, session.dialect, [blocker])
            mine = [r for r in rows if r.kind in (FOLD, FIND_BEST)]
            lowres_run = exp.run("3d_lowres").id
            settled = follow(session, [r for r in mine if r.run == lowres_run])
            assert all((r.state, r.exit_code) == ("failed", 97) for r in settled), settled
            others = [r for r in mine if r.run != lowres_run]
            if scheduler == "sge":  # -hold_jid ran them: each guard stopped its job at once
                for row in follow(session, others):
                    assert (row.state, row.exit_code) == ("failed", BLOCKED_EXIT), row
                    assert "blocked: hpcnn-501-nnUNetTrainer-3d_lowres-f" in (row.detail or "")
            else:  # afterok never satisfied: Slurm holds them, they never start
                reasons = never_satisfied(conn, [r.scheduler_id or "" for r in others])
                assert set(reasons.values()) == {"DependencyNeverSatisfied"}, reasons
                rows_now, _, _, _ = engine.refresh(session.registry, conn, session.dialect,
                                                   others, grace=60)
                for row in rows_now:
                    assert not JobState(row.state).finished, row
                    if scheduler == "slurm":  # the Torque wrappers' qstat shows only Q
                        assert (row.state, row.detail) == ("held", "DependencyNeverSatisfied")
                # --resubmit-failed: new 3d_lowres chains; the held jobs are replaced by new
                # ones that wait on the new chains (as Slurm lists them)
                recorded = [r for o in graph.owners for r in session.registry.jobs(o)]
                again = make_plan(graph, recorded, TrainOptions(resubmit_failed=True), 1,
                                  set())
                new = Submission(session, cfg, again, lambda _: None).run()
                rows += new
                ids = {r.name: r.scheduler_id or "" for r in new}
                lowres = [ids[job_name(lowres_run, f, 2)] for f in range(5)]
                cascade = [ids[job_name(exp.run("3d_cascade_fullres").id, f, 2)]
                           for f in range(5)]
                best = ids[job_name(exp.id, None, 2, FIND_BEST)]
                listed = listed_dependencies(conn, scheduler, [*cascade, best])
                assert listed == {**{i: set(lowres) for i in cascade},
                                  best: set(lowres + cascade)}, listed
                old = conn.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j",
                                ",".join(r.scheduler_id or "" for r in others)]).stdout
                assert {line.split("|")[1] for line in old.split()} == {"CANCELLED"}, old
        finally:
            live = [r.scheduler_id for r in rows if r.scheduler_id]
            engine.cancel(conn, session.dialect, [i for i in live if i])
            if scheduler == "sge":
                subprocess.run([*ssh_argv(testbed)[:-1],
                                f"{testbed['TESTBED_SGE_USER']}@{testbed['TESTBED_HOST']}",
                                f"rm -rf {cfg.cluster.remote_dir}"], capture_output=True,
                               check=False)


def render(cfg: Config, session: Session, spec: JobSpec) -> str:
    from hpcnn.jobs.script import render_job

    return render_job(cfg, session.dialect, spec)


def follow(session: Session, rows: list[JobRow], timeout: float = 150) -> list[JobRow]:
    """Refresh until every job of ``rows`` ended."""
    deadline = time.time() + timeout
    while True:
        rows, _, _, _ = engine.refresh(session.registry, session.conn, session.dialect, rows,
                                       grace=60)
        if all(JobState(r.state).finished for r in rows) or time.time() > deadline:
            return rows
        time.sleep(2)


def never_satisfied(conn: Connection, ids: list[str], timeout: float = 90) -> dict[str, str]:
    """Slurm's reason for each pending job, once every one says DependencyNeverSatisfied (or
    the time is up)."""
    deadline = time.time() + timeout
    while True:
        out = conn.run(["squeue", "-h", "-o", "%i|%r", "-j", ",".join(ids)]).stdout
        reasons = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        if (set(reasons.values()) == {"DependencyNeverSatisfied"} and len(reasons) == len(ids)
                or time.time() > deadline):
            return reasons
        time.sleep(2)
