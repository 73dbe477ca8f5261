"""Preprocessing on the cluster as the experiment's first job: it preprocesses with the
configured planner and the configurations the experiment trains, and ``--resubmit-failed``
after it failed submits it again (its second attempt) with the folds after it, relinking the
folds still held on the failed one; without the flag, nothing that could never start is
submitted. Plans only, no cluster."""

from __future__ import annotations

from test_job_graph import config, experiment, fold_rows

from hpcnn.jobs.graph import build_graph
from hpcnn.jobs.model import PREP, job_name, prep_spec
from hpcnn.jobs.plan import BLOCKED, KEEP, SUBMIT, make_plan
from hpcnn.services.train import TrainOptions
from hpcnn.state import JobRow
from hpcnn.workspace import RemoteLayout


def _plan(exp, rows, **asked):
    graph = build_graph(config(), exp, remote_prep=True, find_best=True)
    return make_plan(graph, rows, TrainOptions(**asked), 2,
                     {r.name for r in rows if r.attempt == 2})


def _prep_row(exp, state: str) -> JobRow:
    return JobRow(name=job_name(exp.id, None, kind=PREP), run=exp.id, kind=PREP, attempt=1,
                  job_dir=f"/r/{exp.id}/prep", scheduler="slurm", state=state,
                  scheduler_id="50", exit_code=1 if state == "failed" else None)


def test_the_prep_job_runs_the_planner_for_the_experiments_configurations() -> None:
    cfg = config()
    cfg.preprocess.planner = "nnUNetPlannerResEncM"
    cfg.preprocess.gpu_memory_target = 8.0
    exp = experiment("2d", "3d_lowres", "3d_cascade_fullres")
    spec = prep_spec(cfg, RemoteLayout("/r"), exp.runs[0], exp.configurations, exp.id)
    plan_line = spec.commands[0]
    at = plan_line.index("-c")
    assert plan_line[at + 1:at + 4] == ["2d", "3d_lowres", "3d_fullres"]
    assert plan_line[plan_line.index("-pl") + 1] == "nnUNetPlannerResEncM"
    assert plan_line[plan_line.index("-gpu_memory_target") + 1] == "8"
    again = prep_spec(cfg, RemoteLayout("/r"), exp.runs[0], exp.configurations, exp.id, 2)
    assert again.name == f"hpcnn-{exp.id}-prep-a2" and again.name != spec.name


def test_resubmit_failed_after_a_failed_prep_job() -> None:
    exp = experiment("2d", "3d_fullres", folds=(0, 1))
    held = [r for run in exp.runs for f in (0, 1)
            for r in fold_rows(run, f, [("queued", None), ("queued", None)],
                               first_id=100 + 10 * f + (0 if run.configuration == "2d" else 50))]
    best = JobRow(name=job_name(exp.id, None, 1, "find_best"), run=exp.id, kind="find_best",
                  attempt=1, job_dir="/r/fb", scheduler="slurm", state="queued",
                  scheduler_id="90")
    held.append(best)
    rows = [_prep_row(exp, "failed"), *held]
    plan = _plan(exp, rows)
    assert not plan.to_submit, "nothing that could never start"
    assert plan.steps[PREP].action == BLOCKED
    fewer = [r for r in rows if not (r.run == exp.runs[0].id and r.fold == 1)]
    plan = _plan(exp, fewer)  # a fold never submitted would wait on the failed job
    assert not plan.to_submit
    assert plan.steps["2d/f1"].action == BLOCKED
    assert plan.steps["2d/f1"].why.startswith("waits on preprocessing, which is failed (job ")

    plan = _plan(exp, rows, resubmit_failed=True)
    assert plan.steps[PREP].action == SUBMIT and plan.steps[PREP].attempt == 2
    assert list(plan.steps)[0] == PREP, "submitted first: the folds wait on it"
    folds = [s for s in plan.steps.values() if s.node.kind == "fold"]
    assert all(s.action == SUBMIT and s.chain.first == 3 for s in folds), folds
    assert all(len(s.replaces) == 2 for s in folds), "the held jobs are cancelled, not left"
    assert plan.steps["find_best"].action == SUBMIT

    done = [_prep_row(exp, "completed"), *held]
    plan = _plan(exp, done, resubmit_failed=True)
    assert plan.steps[PREP].action == KEEP and not plan.to_submit


def test_a_remote_planner_needs_its_plans_named(workspace, hpcnn) -> None:
    import json

    raw = workspace / "nnUNet_raw" / "Dataset501_Tiny"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {
        "background": 0, "liver": 1}, "numTraining": 5, "file_ending": ".nrrd"}))
    (workspace / "cluster.yaml").write_text(
        "training: {dataset: 501, preprocess: remote}\n"
        "preprocess: {planner: nnUNetPlannerResEncM}\n")
    code, out, err = hpcnn("train-all-folds", "--dry-run")
    assert code == 2 and "preprocess.planner nnUNetPlannerResEncM" in err, out + err
    code, out, err = hpcnn("train-all-folds", "--dry-run", "--plans", "nnUNetResEncUNetMPlans")
    assert code == 0, out + err
    assert "-pl nnUNetPlannerResEncM" in (workspace / ".hpcnn" / "dry-run").joinpath(
        "501-nnUNetTrainer-3d_fullres-nnUNetResEncUNetMPlans",
        "hpcnn-501-nnUNetTrainer-3d_fullres-nnUNetResEncUNetMPlans-prep.sh").read_text()
