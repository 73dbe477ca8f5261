"""The experiment → graph → plan → submission home (hpcnn.jobs), without a cluster: which
configurations an experiment trains, what each job waits for and asks for, what a plan submits
given the registry, and in what order and with which dependencies a submission records and
submits its jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpcnn.config import Config
from hpcnn.errors import ConfigError
from hpcnn.jobs.experiment import Experiment, choose_configurations, plans_configurations
from hpcnn.jobs.graph import build_graph, fold_key
from hpcnn.jobs.model import BLOCKED_EXIT, NEEDS_GUARD, Run, job_name
from hpcnn.jobs.plan import BLOCKED, KEEP, SUBMIT, make_plan
from hpcnn.jobs.submit import Submission, reconcile
from hpcnn.schedulers import get_dialect
from hpcnn.services.train import TrainOptions
from hpcnn.state import JobRow, Registry
from hpcnn.workspace import RemoteLayout

DATASET = "Dataset501_Liver"
METHOD = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def experiment(*configurations: str, folds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> Experiment:
    return Experiment(DATASET, "nnUNetTrainer", "nnUNetPlans", configurations, folds)


def config(**training: object) -> Config:
    return Config.model_validate({"resources": {"cpus": 4, "gpus": 1, "mem": "64gb",
                                                "walltime": "10:00:00", "queue": "gpu"},
                                  "training": training})


def fold_rows(run: Run, fold: int, states: list[tuple[str, int | None]],
              first_id: int = 100) -> list[JobRow]:
    return [JobRow(name=job_name(run.id, fold, a + 1), run=run.id, kind="fold", fold=fold,
                   attempt=a + 1, job_dir=f"/r/{run.id}/f{fold}a{a + 1}", scheduler="slurm",
                   state=state, scheduler_id=str(first_id + a), exit_code=code)
            for a, (state, code) in enumerate(states)]


def test_one_configuration_is_todays_run() -> None:
    """A single-configuration experiment has the run's id and no npz, no find-best job: what
    train-all-folds did before experiments existed."""
    exp = experiment("3d_fullres")
    assert exp.id == "501-nnUNetTrainer-3d_fullres" == exp.runs[0].id and not exp.npz
    graph = build_graph(config(), exp, remote_prep=False, find_best=True)
    assert list(graph.nodes) == [fold_key("3d_fullres", f) for f in range(5)]
    assert all(not n.needs for n in graph.nodes.values())


def test_the_whole_method_as_a_graph() -> None:
    cfg = config(resources_per_configuration={"2d": {"mem": "24gb", "walltime": "4h"}})
    exp = experiment(*METHOD)
    assert exp.npz and exp.id == "501-nnUNetTrainer-2d+3d_cascade_fullres+3d_fullres+3d_lowres"
    graph = build_graph(cfg, exp, remote_prep=True, find_best=True)
    assert len(graph.nodes) == 1 + 20 + 1
    prep, best = graph.nodes["prep"], graph.nodes["find_best"]
    # CPU jobs: no GPU, their own cpus/mem/walltime, the fold jobs' queue
    assert (prep.resources.gpus, prep.resources.cpus, prep.resources.mem,
            prep.resources.walltime, prep.resources.queue) == (0, 8, 32 * 1024, 4 * 3600, "gpu")
    assert (best.resources.gpus, best.resources.cpus) == (0, 4)
    assert {n.node for n in best.needs} == {k for k, n in graph.nodes.items() if n.kind == "fold"}
    cascade = graph.nodes[fold_key("3d_cascade_fullres", 3)]
    assert [n.node for n in cascade.needs] == ["prep", *(f"3d_lowres/f{f}" for f in range(5))]
    assert [n.node for n in graph.nodes["2d/f0"].needs] == ["prep"]
    # per-configuration overrides change only that configuration's folds
    assert (graph.nodes["2d/f0"].resources.mem, graph.nodes["2d/f0"].resources.walltime,
            graph.nodes["2d/f0"].resources.gpus) == (24 * 1024, 4 * 3600, 1)
    assert graph.nodes["3d_fullres/f0"].resources is cfg.resources
    # topological: every node after what it needs
    order = list(graph.nodes)
    assert all(order.index(n.node) < order.index(k)
               for k, node in graph.nodes.items() for n in node.needs)


def test_the_cascade_needs_its_lowres_and_all_five_folds() -> None:
    with pytest.raises(ConfigError, match="train 3d_lowres in the same experiment"):
        experiment("3d_fullres", "3d_cascade_fullres")
    with pytest.raises(ConfigError, match="all five 3d_lowres folds"):
        experiment("3d_lowres", "3d_cascade_fullres", folds=(0, 1))


def test_configurations_are_checked_against_the_plans(tmp_path: Path) -> None:
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps({"configurations": {"2d": {}, "3d_fullres": {}}}))
    defined = plans_configurations(plans)
    assert defined == ["2d", "3d_fullres"]
    with pytest.raises(ConfigError, match="define no 3d_lowres, 3d_cascade_fullres") as info:
        choose_configurations(list(METHOD), defined, plans)
    assert "only when the 3d_fullres patch" in str(info.value)
    assert choose_configurations(["all"], defined, plans) == ("2d", "3d_fullres")
    cascade = ["2d", "3d_cascade_fullres", "3d_fullres", "3d_lowres"]
    assert choose_configurations(["all"], cascade, plans) == (
        "2d", "3d_lowres", "3d_cascade_fullres", "3d_fullres")
    missing = tmp_path / "none.json"
    assert plans_configurations(missing) is None  # preprocessed on the cluster: unchecked
    assert choose_configurations(["2d"], None, missing) == ("2d",)
    with pytest.raises(ConfigError, match="needs the plans"):
        choose_configurations(["all"], None, missing)
    plans.write_text("[]")
    with pytest.raises(ConfigError, match="not an nnU-Net plans file"):
        plans_configurations(plans)


def test_training_configurations_in_cluster_yaml() -> None:
    assert config().training.chosen_configurations == ["3d_fullres"]
    assert config(configuration="2d").training.chosen_configurations == ["2d"]
    assert config(configurations=["2d", "3d_fullres"]).training.chosen_configurations == [
        "2d", "3d_fullres"]
    for bad in (["2d", "2d"], ["all", "2d"], ["2d;rm"]):
        with pytest.raises(ValueError):
            config(configurations=bad)
    with pytest.raises(ValueError, match="not among"):
        config(configuration="2d", configurations=["3d_fullres"])
    # a configuration's own walltime must leave room for training.walltime_margin (10m)
    with pytest.raises(ValueError, match=r"resources_per_configuration\.2d\.walltime"):
        config(resources_per_configuration={"2d": {"walltime": "5m"}})


def second_attempts(rows: list[JobRow]) -> set[str]:
    """What ``folds.continuations`` finds for chains of two attempts recorded by hpcnn: each
    second attempt continues the first."""
    return {r.name for r in rows if r.attempt == 2}


def plan_of(exp: Experiment, rows: list[JobRow], **asked: object):
    graph = build_graph(config(), exp, remote_prep=False, find_best=True)
    return make_plan(graph, rows, TrainOptions(**asked), 2, second_attempts(rows))


def test_a_failed_lowres_fold_keeps_the_cascade_and_find_best_back() -> None:
    """Nothing that can never start is submitted: the cascade folds and find_best wait, naming
    the lowres fold; --resubmit-failed resubmits that fold and then submits them."""
    exp = experiment("3d_lowres", "3d_cascade_fullres")
    lowres = exp.run("3d_lowres")
    rows = [r for f in range(5) for r in fold_rows(
        lowres, f, [("completed", 0), ("completed", 0)] if f != 2 else
        [("failed", 1), ("failed", 98)], first_id=100 + 10 * f)]
    plan = plan_of(exp, rows)
    assert {k: s.action for k, s in plan.steps.items() if k.startswith("3d_lowres")} == {
        f"3d_lowres/f{f}": KEEP for f in range(5)}
    blocked = [s for s in plan.steps.values() if s.action == BLOCKED]
    assert len(blocked) == 6 and not plan.to_submit
    assert "waits on 3d_lowres fold 2, which is failed" in blocked[0].why
    assert "--resubmit-failed" in blocked[0].why
    plan = plan_of(exp, rows, resubmit_failed=True)
    submit = {k: s for k, s in plan.steps.items() if s.action == SUBMIT}
    assert set(submit) == {"3d_lowres/f2", *(f"3d_cascade_fullres/f{f}" for f in range(5)),
                           "find_best"}
    assert (submit["3d_lowres/f2"].chain.first, submit["3d_lowres/f2"].chain.length) == (3, 2)


def test_nothing_new_when_everything_is_there() -> None:
    exp = experiment("2d", "3d_fullres", folds=(0, 1))
    rows = [r for c in exp.configurations for f in (0, 1)
            for r in fold_rows(exp.run(c), f, [("completed", 0), ("completed", 0)])]
    plan = plan_of(exp, rows)
    assert [k for k, s in plan.steps.items() if s.action == SUBMIT] == ["find_best"]
    best = JobRow(name=job_name(exp.id, None, 1, "find_best"), run=exp.id, kind="find_best",
                  job_dir="/r/fb", scheduler="slurm", state="completed", scheduler_id="9",
                  exit_code=0)
    plan = plan_of(exp, [*rows, best])
    assert not plan.to_submit and plan.steps["find_best"].action == KEEP
    assert len(plan.kept_folds) == 4


@dataclass
class FakeConn:
    """Takes every submission (ids 1, 2, ...) and keeps the command lines."""

    lines: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    argvs: list[list[str]] = field(default_factory=list)

    def run(self, argv: list[str], check: bool = True) -> None:
        self.argvs.append(argv)

    def write_text(self, path: str, text: str, mode: int = 0o600) -> None:
        self.files[path] = text

    def run_shell(self, line: str, check: bool = True):
        self.lines.append(line)

        class Res:
            ok, returncode, stderr = True, 0, ""
            stdout = f"{len(self.lines)}\n"
        return Res()


@dataclass
class FakeTarget:
    registry: Registry
    conn: FakeConn
    dialect: object
    remote: RemoteLayout


def test_submission_waits_on_the_last_attempt_of_each_lowres_chain(tmp_path: Path) -> None:
    """Topological order, intent recorded with what each job waits for (scheduler id, kind and
    job name), the cascade's first attempts afterok on each lowres chain's LAST attempt (also
    checked by its guard), continuations afterany, find_best after every chain."""
    exp = experiment("3d_lowres", "3d_cascade_fullres")
    cfg = config()
    graph = build_graph(cfg, exp, remote_prep=False, find_best=True)
    plan = make_plan(graph, [], TrainOptions(), 2, set())
    target = FakeTarget(Registry(tmp_path / "state.db"), FakeConn(), get_dialect("slurm"),
                        RemoteLayout("/home/u/hpcnn"))
    said: list[str] = []
    rows = Submission(target, cfg, plan, said.append).run()
    assert len(rows) == 21 and [r.scheduler_id for r in rows] == [str(i) for i in range(1, 22)]
    assert said[0].startswith("submitted 3d_lowres fold 0 attempt 1: job 1")
    by_name = {r.name: r for r in rows}
    lowres, cascade = exp.run("3d_lowres"), exp.run("3d_cascade_fullres")
    last = [by_name[job_name(lowres.id, f, 2)] for f in range(5)]
    first = by_name[job_name(cascade.id, 0, 1)]
    assert sorted(target.registry.needed_jobs(first.name)) == sorted(
        (r.name, "afterok") for r in last)
    line = next(x for x in target.conn.lines if first.job_dir in x)
    assert "--dependency=afterok:" + ":".join(r.scheduler_id for r in last) in line
    script = target.conn.files[f"{first.job_dir}/job.sh"]
    assert "hpcnn-needs" in script and all(r.job_dir in script for r in last)
    assert target.registry.needed_jobs(job_name(cascade.id, 0, 2)) == [(first.name, "afterany")]
    best = by_name[job_name(exp.id, None, 1, "find_best")]
    assert len(target.registry.needed_jobs(best.name)) == 10
    assert "#SBATCH --gres" not in target.conn.files[f"{best.job_dir}/job.sh"]
    assert "--npz" in target.conn.files[f"{first.job_dir}/job.sh"]


def test_a_kept_chain_that_ended_is_waited_for_by_its_marker_only(tmp_path: Path) -> None:
    """A completed lowres fold is not a scheduler dependency (Slurm refuses ids it forgot),
    but the cascade's guard still reads its exit marker; a queued one is both."""
    exp = experiment("3d_lowres", "3d_cascade_fullres")
    lowres = exp.run("3d_lowres")
    rows = [r for f in range(5) for r in fold_rows(
        lowres, f, [("completed", 0), ("completed", 0)] if f else [("running", None),
                                                                    ("queued", None)],
        first_id=100 + 10 * f)]
    cfg = config()
    plan = make_plan(build_graph(cfg, exp, remote_prep=False, find_best=False), rows,
                     TrainOptions(), 2,
                     second_attempts(rows))
    target = FakeTarget(Registry(tmp_path / "state.db"), FakeConn(), get_dialect("slurm"),
                        RemoteLayout("/home/u/hpcnn"))
    Submission(target, cfg, plan, lambda _: None).run()
    first = job_name(exp.run("3d_cascade_fullres").id, 0, 1)
    assert target.registry.needed_jobs(first) == [(job_name(lowres.id, 0, 2), "afterok")]
    line = target.conn.lines[0]
    assert "--dependency=afterok:101 " in line
    script = next(t for p, t in target.conn.files.items() if first in p)
    assert all(f"/r/{lowres.id}/f{f}a2" in script for f in range(5))


def test_reconcile_records_what_the_scheduler_took_and_forgets_the_rest(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "state.db")
    for name in ("a", "b"):
        registry.add(JobRow(name=name, run="r", kind="predict", job_dir=f"/j/{name}",
                            scheduler="slurm", state="pending"))

    class Conn(FakeConn):
        def run_shell(self, line: str, check: bool = True):
            class Res:
                ok, returncode, stderr = True, 0, ""
                stdout = "\n__HPCNN_JOB__ 0\n4242\n\n__HPCNN_JOB__ 1\n"
            return Res()

    said: list[str] = []
    rows = reconcile(FakeTarget(registry, Conn(), get_dialect("slurm"), RemoteLayout("/")),
                     registry.jobs(), said.append)
    assert [(r.name, r.scheduler_id, r.state) for r in rows] == [("a", "4242", "queued")]
    assert registry.get("b") is None and said == [
        "recovered job a: the scheduler had accepted it as 4242"]


def test_the_needs_guard_passes_only_when_every_needed_job_completed(tmp_path: Path) -> None:
    import subprocess

    dirs = []
    for name, code in (("a", "0"), ("b", "1\nphase=run"), ("c", None)):
        d = tmp_path / name
        d.mkdir()
        if code is not None:
            (d / "exit_code").write_text(code + "\n")
        dirs.append(str(d))

    def guard(*names: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", NEEDS_GUARD, "x",
                               *(str(tmp_path / n) for n in names)],
                              capture_output=True, text=True, check=False)

    assert guard("a").returncode == 0
    res = guard("a", "b")
    assert res.returncode == BLOCKED_EXIT and "blocked: b did not complete (exit 1)" in res.stderr
    assert guard("c").returncode == BLOCKED_EXIT  # not ended at all (Grid Engine never does
    # that: -hold_jid waits for the end)


def test_a_version_2_registry_migrates_to_experiments(tmp_path: Path) -> None:
    """A v2 registry opens as v3: each run becomes the one run of its own experiment (its
    folds from the options it was recorded with) and each dependency learns the name of the
    job it waits for."""
    import sqlite3

    from hpcnn.state import _V1_JOBS, _V2, SCHEMA_VERSION

    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(_V1_JOBS + _V2)
    run = "501-nnUNetTrainer-3d_fullres"
    db.execute("INSERT INTO runs (id, dataset, trainer, plans, configuration, host, created_at, "
               "options) VALUES (?, ?, 'nnUNetTrainer', 'nnUNetPlans', '3d_fullres', 'h', 5.0, "
               "?)", [run, DATASET, json.dumps({"folds": [0, 1], "npz": False})])
    for attempt, job_id in ((1, "77"), (2, "78")):
        db.execute("INSERT INTO jobs (name, run, kind, fold, attempt, job_dir, scheduler, "
                   "scheduler_id, state) VALUES (?, ?, 'fold', 0, ?, '/j', 'slurm', ?, "
                   "'queued')", [f"hpcnn-{run}-f0-a{attempt}", run, attempt, job_id])
    db.execute("INSERT INTO dependencies VALUES (?, '77', 'afterany')", [f"hpcnn-{run}-f0-a2"])
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    reg = Registry(path)
    found = reg.experiment(run)
    assert found is not None and (found.configuration_list, found.fold_list, found.host) == (
        ["3d_fullres"], [0, 1], "h")
    assert reg.run(run).experiment == run  # type: ignore[union-attr]
    assert reg.needed_jobs(f"hpcnn-{run}-f0-a2") == [(f"hpcnn-{run}-f0-a1", "afterany")]
    assert reg.dependencies(f"hpcnn-{run}-f0-a2") == [("77", "afterany")]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    Registry(path)  # opening again changes nothing
    assert len(reg.runs()) == 1


def test_status_shows_each_configuration_of_the_experiment(tmp_path: Path) -> None:
    """Without --run, status shows every run of the most recent experiment; --configuration
    picks some; a configuration the experiment does not train is a clear error."""
    from hpcnn.jobs.submit import record_experiment
    from hpcnn.services.session import Session
    from hpcnn.services.status import experiment_status, worst_exit

    cfg = Config(workspace=tmp_path)
    exp = experiment("2d", "3d_fullres", folds=(0,))
    with Session(cfg) as session:
        record_experiment(session.registry, exp, "local", folds=[0])
        for c, state in (("2d", "completed"), ("3d_fullres", "failed")):
            for row in fold_rows(exp.run(c), 0, [(state, 0 if state == "completed" else 1)]):
                session.registry.add(row)
        statuses = experiment_status(session)
        assert [(s.run.configuration, s.folds[0].view.state.value) for s in statuses] == [
            ("2d", "completed"), ("3d_fullres", "failed")]
        assert worst_exit(statuses) == 11
        (only,) = experiment_status(session, configurations=["2d"])
        assert only.run.id == exp.run("2d").id and only.exit_code == 0
        with pytest.raises(ConfigError, match="trains no 3d_lowres"):
            experiment_status(session, configurations=["3d_lowres"])
        (one,) = experiment_status(session, exp.run("3d_fullres").id)
        assert one.run.configuration == "3d_fullres"


def method_workspace(ws: Path, configurations: list[str]) -> None:
    """A workspace preprocessed for ``configurations`` (plans and split only: enough to plan)
    and a cluster.yaml for a Slurm cluster."""
    folder = ws / "nnUNet_preprocessed" / DATASET
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(
        {"configurations": {c: {} for c in configurations}}))
    (folder / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 5))
    (ws / "cluster.yaml").write_text(
        "cluster: {scheduler: slurm, host: login.example.org, remote_dir: /scratch/me}\n"
        "resources: {walltime: '10:00:00', gpus: 1, cpus: 4, mem: 32gb}\n"
        "training: {dataset: 501, max_resubmits: 1}\n")


def test_dry_run_shows_the_graph_and_the_gpu_hours(workspace: Path, hpcnn) -> None:
    method_workspace(workspace, list(METHOD))
    code, out, err = hpcnn("train-all-folds", "-c", "3d_lowres", "-c", "3d_cascade_fullres",
                           "--dry-run")
    assert code == 0, out + err
    graph = out.split("# ===== the job graph")[1].split("# ===== what would run")[0]
    lowres_last = [f"hpcnn-501-nnUNetTrainer-3d_lowres-f{f}-a2" for f in range(5)]
    line = next(x for x in graph.splitlines()
                if x.startswith("hpcnn-501-nnUNetTrainer-3d_cascade_fullres-f3-a1 "))
    assert "<-  " + ", ".join(f"afterok {n}" for n in lowres_last) in line
    assert "[4 cpu, 1 gpu, 32768 MB, 10:00:00]" in line
    best = next(x for x in graph.splitlines() if "-find_best-a1" in x)
    assert "0 gpu" in best and best.count("afterok") == 10
    # 10 chains of 2 attempts, 10 h and 1 GPU each; find_best asks for no GPU
    assert "GPU-hours asked for at most: 200.0" in graph
    assert "--npz" in out
    assert Registry(workspace / ".hpcnn" / "state.db").jobs() == []  # nothing recorded
    code, out, err = hpcnn("train-all-folds", "--dry-run")  # today's one configuration
    assert code == 0 and "GPU-hours asked for at most: 100.0" in out, out + err
    assert "-find_best" not in out and "--npz" not in out


def test_a_configuration_the_plans_lack_is_refused_before_anything(workspace: Path,
                                                                  hpcnn) -> None:
    method_workspace(workspace, ["2d", "3d_fullres"])
    code, out, err = hpcnn("train-all-folds", "-c", "3d_lowres", "-c", "3d_cascade_fullres")
    assert code == 2 and "define no 3d_lowres, 3d_cascade_fullres" in err, out + err
    assert "nothing" not in out and "submitted" not in out
    assert not (workspace / ".hpcnn" / "dry-run").exists()


def test_cpu_jobs_run_what_the_experiment_needs() -> None:
    """The preprocessing job prepares each configuration's data once (the cascade trains on
    3d_fullres's) and asks for no GPU; find_best_configuration gets every configuration and
    fold, after its guard."""
    from hpcnn.jobs.model import find_best_spec, prep_spec

    cfg, exp, layout = config(), experiment(*METHOD), RemoteLayout("/home/u/hpcnn")
    cfg.preprocess.planner = "nnUNetPlannerResEncM"
    prep = prep_spec(cfg, layout, exp.runs[0], exp.configurations, exp.id)
    assert prep.commands[0][-3:-1] == ["-pl", "nnUNetPlannerResEncM"]
    plan_line = prep.commands[0]
    c = plan_line.index("-c")
    assert plan_line[c + 1:c + 4] == ["2d", "3d_fullres", "3d_lowres"]
    assert plan_line[c + 4].startswith("-") and "-np" in plan_line
    assert plan_line[plan_line.index("-np") + 1] == "8"  # resources.prep.cpus
    assert prep.resources is not None and prep.resources.gpus == 0
    assert prep.name == f"hpcnn-{exp.id}-prep" and prep.run == exp.id
    best = find_best_spec(cfg, layout, exp.runs[0], exp.id, exp.configurations, exp.folds, 2,
                          ["/j/a", "/j/b"])
    guard, line = best.commands
    assert guard[-2:] == ["/j/a", "/j/b"] and "hpcnn-needs" in guard
    assert "nnUNetv2_find_best_configuration" in line
    assert line[line.index("-c") + 1:line.index("-p")] == list(METHOD)
    assert line[line.index("-f") + 1:line.index("-np")] == ["0", "1", "2", "3", "4"]
    assert best.name == f"hpcnn-{exp.id}-find_best-a2"


def test_the_local_queue_never_starts_a_cascade_after_a_failed_lowres_fold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole graph through the local scheduler, no nnU-Net: every 3d_lowres job fails in
    its environment setup (97); the queue cancels the cascade folds and find_best it holds
    (their afterok failed) without starting them; the next plan with --resubmit-failed
    submits them again after new 3d_lowres chains."""
    import time

    from hpcnn.jobs import engine
    from hpcnn.schedulers.base import JobState
    from hpcnn.services.session import Session

    monkeypatch.setenv("HPCNN_LOCALQ_DIR", str(tmp_path / "queue"))
    cfg = Config.model_validate({
        "workspace": tmp_path, "resources": {"cpus": 1, "gpus": 0},
        "environment": {"setup": ['case "$HPCNN_JOB_DIR" in */*-3d_lowres/*) false ;; esac']},
        "training": {"max_resubmits": 0}, "local": {"max_parallel": 2}})
    exp = experiment("3d_lowres", "3d_cascade_fullres")
    with Session(cfg) as session:
        graph = build_graph(cfg, exp, remote_prep=False, find_best=True)
        plan = make_plan(graph, [], TrainOptions(), 1, set())
        rows = Submission(session, cfg, plan, lambda _: None).run()
        assert len(rows) == 11
        deadline = time.time() + 90
        while not all(JobState(r.state).finished for r in rows) and time.time() < deadline:
            time.sleep(1)
            rows, _, _, _ = engine.refresh(session.registry, session.conn, session.dialect,
                                           rows, grace=30)
        states = {r.name: (r.state, r.exit_code) for r in rows}
        lowres = exp.run("3d_lowres").id
        for row in rows:
            if row.run == lowres:
                assert states[row.name] == ("failed", 97), states
            else:
                assert states[row.name][0] == "cancelled", states
                assert not (Path(row.job_dir) / "started").exists()  # never ran
        from hpcnn.jobs.submit import record_experiment
        from hpcnn.services.status import experiment_status

        record_experiment(session.registry, exp, "local")
        lowres_status, cascade_status = experiment_status(session)
        fold = cascade_status.folds[2]
        assert fold.view.state == JobState.CANCELLED
        assert f"waits on hpcnn-{lowres}-f0-a1 (failed), " in fold.view.detail
        assert f"hpcnn-{lowres}-f4-a1 (failed)" in fold.view.detail
        assert "--resubmit-failed" in fold.hint
        assert lowres_status.folds[2].view.exit_code == 97
        again = make_plan(graph, session.registry.jobs(lowres)
                          + session.registry.jobs(exp.run("3d_cascade_fullres").id)
                          + session.registry.jobs(exp.id), TrainOptions(resubmit_failed=True),
                          1, set())
        assert len(again.to_submit) == 11 and not again.blocked


def test_resubmitting_a_failed_lowres_fold_relinks_the_held_cascade(tmp_path: Path) -> None:
    """Slurm holds the cascade folds forever once a 3d_lowres fold failed: --resubmit-failed
    resubmits that fold, cancels the held cascade jobs and find_best (they never started) and
    submits them again after the new chain: each job submitted once, none waiting on the
    failed one."""
    exp = experiment("3d_cascade_fullres", "3d_lowres")  # any order: lowres goes first
    lowres, cascade = exp.run("3d_lowres"), exp.run("3d_cascade_fullres")
    rows = [r for f in range(5) for r in fold_rows(
        lowres, f, [("completed", 0), ("completed", 0)] if f != 2 else
        [("failed", 1), ("failed", 98)], first_id=100 + 10 * f)]
    rows += [r for f in range(5) for r in fold_rows(cascade, f, [("held", None), ("held", None)],
                                                   first_id=200 + 10 * f)]
    rows.append(JobRow(name=job_name(exp.id, None, 1, "find_best"), run=exp.id,
                       kind="find_best", attempt=1, job_dir="/r/fb1", scheduler="slurm",
                       state="held", scheduler_id="300"))
    cfg = config()
    graph = build_graph(cfg, exp, remote_prep=False, find_best=True)
    continues = second_attempts(rows)
    plan = make_plan(graph, rows, TrainOptions(), 2, continues)
    assert not plan.to_submit  # without --resubmit-failed the held jobs are left as they are
    plan = make_plan(graph, rows, TrainOptions(resubmit_failed=True), 2, continues)
    steps = {k: s for k, s in plan.steps.items() if s.action == SUBMIT}
    assert list(steps) == ["3d_lowres/f2", *(f"3d_cascade_fullres/f{f}" for f in range(5)),
                           "find_best"]
    c0 = steps["3d_cascade_fullres/f0"]
    assert (c0.chain.first, [r.scheduler_id for r in c0.replaces]) == (3, ["200", "201"])
    assert "waits on 3d_lowres fold 2, resubmitted now" in c0.why
    target = FakeTarget(Registry(tmp_path / "state.db"), FakeConn(), get_dialect("slurm"),
                        RemoteLayout("/home/u/hpcnn"))
    for row in rows:
        target.registry.add(row)
    said: list[str] = []
    new = Submission(target, cfg, plan, said.append).run()
    assert len(new) == 2 + 5 * 2 + 1
    cancelled = [a for a in target.conn.argvs if a[0] == "scancel"]
    assert [a[1:] for a in cancelled] == [["200", "201"], ["210", "211"], ["220", "221"],
                                         ["230", "231"], ["240", "241"], ["300"]]
    assert target.registry.get(job_name(cascade.id, 0, 1)).state == "cancelled"
    first = job_name(cascade.id, 0, 3)
    waits = dict(target.registry.needed_jobs(first))
    assert waits == {job_name(lowres.id, 2, 4): "afterok"}  # only the one not yet complete
    assert any("cancelled hpcnn-501-nnUNetTrainer-3d_cascade_fullres-f0-a1" in x for x in said)


def test_cancel_takes_every_job_of_the_most_recent_experiment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcnn.jobs.submit import record_experiment
    from hpcnn.services.cancel import cancel_jobs, live_jobs
    from hpcnn.services.session import Session

    monkeypatch.setenv("HPCNN_LOCALQ_DIR", str(tmp_path / "queue"))
    exp = experiment("2d", "3d_fullres", folds=(0,))
    with Session(Config(workspace=tmp_path)) as session:
        record_experiment(session.registry, exp, "local")
        for c in exp.configurations:
            for row in fold_rows(exp.run(c), 0, [("queued", None)]):
                session.registry.add(row)
        session.registry.add(JobRow(name=job_name(exp.id, None, 1, "find_best"), run=exp.id,
                                    kind="find_best", job_dir="/j/fb", scheduler="local",
                                    state="held", scheduler_id="77"))
        _, rows = live_jobs(session)
        assert len(rows) == 3
        cancel_jobs(session, rows)
        assert {r.state for r in session.registry.jobs(exp.id)} == {"cancelled"}
        _, rows = live_jobs(session, exp.run("2d").id)
        assert rows == []  # already cancelled
