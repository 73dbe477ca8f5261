"""The job middle without a cluster: the registry (v2, migration, never overwriting), a fold's
state from its attempts, the train plan, run identity, doctor's exit code, config rules, and a
dialect registered by a site through the ``hpcnn.dialects`` entry point group."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest
from runs_helper import fold_job

from hpcnn.config import Config, ConfigError, load_config_file
from hpcnn.errors import EXIT_UNREACHABLE, ConnectionFailed
from hpcnn.jobs.folds import SKIPPED_EXIT, continuations, fold_view
from hpcnn.jobs.model import Run
from hpcnn.jobs.plan import Chain, plan
from hpcnn.schedulers.base import JobState
from hpcnn.services.doctor.base import CheckResult, DoctorContext, Outcome, exit_code, run_checks
from hpcnn.services.session import Session
from hpcnn.services.train import TrainOptions
from hpcnn.state import SCHEMA_VERSION, JobRow, Registry

V1_SCHEMA = """
CREATE TABLE jobs (name TEXT PRIMARY KEY, run TEXT NOT NULL, kind TEXT NOT NULL, fold INTEGER,
    attempt INTEGER NOT NULL DEFAULT 1, job_dir TEXT NOT NULL, scheduler TEXT NOT NULL,
    scheduler_id TEXT, state TEXT NOT NULL, exit_code INTEGER, detail TEXT, submitted_at REAL,
    updated_at REAL, first_missing_at REAL);
CREATE INDEX jobs_run ON jobs(run);
"""


def row(fold: int, attempt: int, state: str, exit_code: int | None = None,
        job_id: str | None = "1") -> JobRow:
    return JobRow(name=f"hpcnn-501-T-3d_fullres-f{fold}-a{attempt}", run="501-T-3d_fullres",
                  kind="fold", job_dir=f"/r/f{fold}a{attempt}", scheduler="slurm", state=state,
                  fold=fold, attempt=attempt, scheduler_id=job_id, exit_code=exit_code)


def test_a_version_1_registry_migrates(tmp_path: Path) -> None:
    """A state.db and cluster.json as the previous release wrote them open as version 2: the
    jobs are kept, each run gets its row, the facts move into the registry."""
    state = tmp_path / ".hpcnn" / "state.db"
    state.parent.mkdir()
    db = sqlite3.connect(state)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO jobs VALUES ('hpcnn-501-nnUNetTrainer-3d_fullres-f0-a1', "
               "'501-nnUNetTrainer-3d_fullres', 'fold', 0, 1, '/r/j', 'torque', '77.srv', "
               "'failed', 3, 'boom', 100.0, 101.0, NULL)")
    db.commit()
    db.close()
    (state.parent / "cluster.json").write_text(json.dumps(
        {"login.example.org": {"dialect": "torque", "remote_dir": "/home/a/hpcnn"}}))
    reg = Registry(state)
    (job,) = reg.jobs()
    assert (job.scheduler_id, job.state, job.exit_code) == ("77.srv", "failed", 3)
    (run,) = reg.runs()
    assert (run.id, run.trainer, run.configuration, run.created_at) == (
        "501-nnUNetTrainer-3d_fullres", "nnUNetTrainer", "3d_fullres", 100.0)
    assert reg.facts("login.example.org") == {"dialect": "torque", "remote_dir": "/home/a/hpcnn"}
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    Registry(state)  # opening again changes nothing
    assert len(reg.jobs()) == 1 and len(reg.runs()) == 1


def test_recording_intent_again_keeps_a_submitted_job(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state.db")
    reg.add(row(0, 1, "pending", job_id=None))
    reg.update(row(0, 1, "x").name, scheduler_id="42", state="queued")
    again = reg.add(row(0, 1, "pending", job_id=None))  # a second train-all-folds, or a retry
    assert (again.scheduler_id, again.state) == ("42", "queued")


def test_a_stored_exit_code_is_never_erased(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state.db")
    name = reg.add(row(0, 1, "running")).name
    reg.update(name, state="failed", exit_code=3)
    reg.update(name, state="failed", exit_code=None, detail="gone from the queue")
    assert reg.get(name).exit_code == 3  # type: ignore[union-attr]


def test_many_jobs_are_stored_in_one_transaction(tmp_path: Path) -> None:
    """A poll's verdicts are stored together (one disk wait, not one per job): all of them or,
    when one is wrong, none; an exit code once stored survives as with ``update``."""
    reg = Registry(tmp_path / "state.db")
    names = [reg.add(row(f, 1, "queued")).name for f in range(3)]
    reg.update(names[0], exit_code=0)
    with pytest.raises(KeyError):
        reg.update_many([(names[1], {"state": "running"}), (names[2], {"nope": 1})])
    assert [reg.get(n).state for n in names] == ["queued"] * 3  # type: ignore[union-attr]
    reg.update_many([(n, {"state": "completed", "exit_code": None}) for n in names])
    stored = [reg.get(n) for n in names]
    assert [(j.state, j.exit_code) for j in stored] == [  # type: ignore[union-attr]
        ("completed", 0), ("completed", None), ("completed", None)]


def test_a_builtin_scheduler_is_known_without_reading_entry_points(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points are read from every installed distribution (tens of milliseconds in
    nnU-Net's environment, on every command): a built-in dialect does not need them."""
    import importlib.metadata

    from hpcnn.schedulers import _registry, get_dialect

    def scan(**_: object) -> None:
        raise AssertionError("entry points read for a built-in dialect")

    _registry.cache_clear()
    monkeypatch.setattr(importlib.metadata, "entry_points", scan)
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster: {scheduler: torque, host: h}\n")
    assert load_config_file(path).cluster.scheduler == "torque"
    assert get_dialect("slurm").name == "slurm"
    _registry.cache_clear()


def test_forget_removes_only_unsubmitted_intent(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state.db")
    reg.add(row(0, 1, "pending", job_id=None))
    reg.add(row(1, 1, "queued", job_id="9"))
    reg.forget(row(0, 1, "x").name)
    reg.forget(row(1, 1, "x").name)
    assert [r.fold for r in reg.jobs()] == [1]


@pytest.mark.parametrize(("chain", "state", "attempt", "code"), [
    # attempt 1 completed: the queued continuation is irrelevant
    ([("completed", 0), ("queued", None)], "completed", 1, 0),
    # walltime stop, continuation waiting: the fold is queued again, told by attempt 2
    ([("timeout", 75), ("held", None)], "held", 2, None),
    ([("timeout", 75), ("running", None)], "running", 2, None),
    # a real failure: the continuation's guard skipped; the fold failed with attempt 1's code
    ([("failed", 1), ("failed", SKIPPED_EXIT)], "failed", 1, 1),
    # continued after walltime, then completed (its continuation exited at once)
    ([("timeout", 75), ("completed", 0), ("completed", 0)], "completed", 2, 0),
    # every attempt stopped at the walltime: out of attempts
    ([("timeout", 75), ("timeout", 75)], "timeout", 2, 75),
    ([("queued", None), ("held", None)], "queued", 1, None),
    ([("lost", None), ("failed", SKIPPED_EXIT)], "lost", 1, None),
    ([("unknown", None), ("held", None)], "unknown", 1, None),
])
def test_a_fold_is_told_by_its_attempts(chain, state, attempt, code) -> None:
    rows = [row(2, i + 1, s, c) for i, (s, c) in enumerate(chain)]
    view = fold_view(list(reversed(rows)))
    assert (view.state.value, view.attempt, view.exit_code, view.attempts) == (
        state, attempt, code, len(chain))
    if state == "timeout":
        assert "max_resubmits" in view.detail


def test_plan_submits_only_what_is_missing_or_asked() -> None:
    views = {0: fold_view([row(0, 1, "completed", 0)]),
             1: fold_view([row(1, 1, "failed", 1), row(1, 2, "failed", SKIPPED_EXIT)]),
             2: fold_view([row(2, 1, "running")])}
    chains, kept = plan(views, [0, 1, 2, 3], TrainOptions(), 3)
    assert chains == [Chain(3, 1, 3, "new")] and [v.fold for v in kept] == [0, 1, 2]
    chains, _ = plan(views, [0, 1, 2, 3], TrainOptions(resubmit_failed=True), 3)
    assert [(c.fold, c.first) for c in chains] == [(1, 3), (3, 1)]
    with pytest.raises(ConfigError, match="fold 2 is running"):
        plan(views, [0, 1, 2], TrainOptions(fresh=True), 3)
    chains, _ = plan(views, [0, 1], TrainOptions(fresh=True), 2)
    assert [(c.fold, c.first, c.why) for c in chains] == [(0, 2, "fresh"), (1, 3, "fresh")]


def test_a_resubmitted_fold_is_told_by_its_newest_chain(tmp_path: Path) -> None:
    """Attempt 1 failed, its continuation skipped (98); ``--resubmit-failed`` started a chain at
    attempt 3 (no afterany dependency): the fold is what the new chain does, never attempt 1's
    old failure; the registry tells the chains apart by their recorded dependencies."""
    reg = Registry(tmp_path / "state.db")
    old = [row(0, 1, "failed", 1, job_id="11"), row(0, 2, "failed", SKIPPED_EXIT, job_id="12")]
    reg.add(old[0])
    reg.add(old[1], [("11", "afterany")])
    reg.add(row(0, 3, "queued", job_id="13"))
    reg.add(row(0, 4, "held", job_id="14"), [("13", "afterany")])
    continuing = continuations(reg, "501-T-3d_fullres")
    assert continuing == {old[1].name, row(0, 4, "x").name}
    cases = [
        (("queued", None), ("held", None), "queued", 3, None),
        (("running", None), ("held", None), "running", 3, None),
        (("failed", 1), ("failed", SKIPPED_EXIT), "failed", 3, 1),
        (("timeout", 75), ("queued", None), "queued", 4, None),
        (("timeout", 75), ("timeout", 75), "timeout", 4, 75),
        (("completed", 0), ("completed", 0), "completed", 3, 0),
    ]
    for (s3, c3), (s4, c4), state, attempt, code in cases:
        rows = [*old, row(0, 3, s3, c3), row(0, 4, s4, c4)]
        view = fold_view(rows, continuing)
        assert (view.state.value, view.attempt, view.exit_code, view.attempts,
                view.chain_first) == (state, attempt, code, 4, 3), (s3, s4)
        if state == "timeout":  # the new chain's attempts, not the fold's
            assert "after 2 attempt(s)" in view.detail
    # Resubmitted again: a third chain from attempt 5.
    chains, _ = plan({0: fold_view([*old, row(0, 3, "failed", 1),
                                    row(0, 4, "failed", SKIPPED_EXIT)], continuing)},
                     [0], TrainOptions(resubmit_failed=True), 2)
    assert [(c.first, c.length, c.after, c.may_resume) for c in chains] == [(5, 2, None, True)]


def test_only_continuations_check_the_attempt_before_and_resume(tmp_path: Path) -> None:
    """A fold's first attempt trains from scratch (no --c: nnU-Net would warn that it cannot
    continue); a continuation checks the attempt before it and resumes; the first attempt of a
    resubmitted chain checks nothing and resumes where the fold has a checkpoint."""
    from runs_helper import config_run

    from hpcnn.jobs.model import fold_spec
    from hpcnn.workspace import RemoteLayout

    cfg = Config(workspace=tmp_path)
    run, layout = config_run(cfg), RemoteLayout(cfg.remote_dir)

    def spec(attempt: int, **kw: bool) -> tuple[bool, str | None]:
        commands = fold_spec(cfg, layout, run, 0, attempt, **kw).commands
        guard = next((c[-1] for c in commands if "hpcnn-guard" in c), None)
        return "--c" in commands[-1], guard and guard.rsplit("-", 1)[-1]

    assert spec(1) == (False, None)
    assert spec(2) == (True, "a1")
    assert spec(5, continues=False, resume=True) == (True, None)
    assert spec(5, continues=False) == (False, None)
    assert spec(6, continues=True) == (True, "a5")


def test_run_identity_is_the_resolved_dataset(tmp_path: Path) -> None:
    """The laptop's contents never change a run's id or what nnU-Net is given: a name that
    resolves to nothing is an error, never a run named after the spelling."""
    cfg = Config(workspace=tmp_path)
    cfg.training.dataset = "Liver"
    with pytest.raises(ConfigError, match="no dataset 'Liver'"):
        Session(cfg).new_run()
    (tmp_path / "nnUNet_raw" / "Dataset501_Liver").mkdir(parents=True)
    run = Session(cfg).new_run()
    assert (run.id, run.dataset) == ("501-nnUNetTrainer-3d_fullres", "Dataset501_Liver")
    assert Session(cfg).new_run("501") == run == Session(cfg).new_run("dataset501_liver")
    with pytest.raises(ConfigError):
        Run("Liver", "nnUNetTrainer", "nnUNetPlans", "3d_fullres")


def test_local_scheduler_with_a_host_names_both_keys(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster:\n  scheduler: local\n  host: login.example.org\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert "cluster.host" in str(info.value) and "'local'" in str(info.value)


def test_a_connection_dropped_inside_any_check_is_exit_3(tmp_path: Path) -> None:
    """The exit code comes from the error, whatever the check is called."""

    def check_login_shell(ctx: DoctorContext) -> CheckResult:
        raise ConnectionFailed("connection to the cluster was closed")

    def check_after(ctx: DoctorContext) -> CheckResult:
        return CheckResult("after", Outcome.OK)

    results = run_checks(DoctorContext(Session(Config(workspace=tmp_path))),
                         [check_login_shell, check_after])
    assert [r.outcome for r in results] == [Outcome.FAIL, Outcome.SKIP]
    assert results[0].name == "login shell" and exit_code(results) == EXIT_UNREACHABLE


PLUGIN = '''
from hpcnn.schedulers.slurm import SlurmDialect

class SiteDialect(SlurmDialect):
    """A site's own flavour of Slurm, with its own header."""
    name = "sitex"
    templates_dir = __file__.rsplit("/", 1)[0] + "/templates"
    job_id_variables = ("SITEX_JOB", "SLURM_JOB_ID")

    def format_memory(self, mb):
        return f"{mb}MiB"
'''


@pytest.fixture
def site_dialect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package providing a dialect, installed on sys.path with its entry point metadata
    (what `pip install` of a site package leaves behind)."""
    from hpcnn.schedulers import _registry

    pkg = tmp_path / "site" / "sitex_dialect"
    (pkg / "templates" / "header").mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN)
    (pkg / "templates" / "header" / "sitex.sh.j2").write_text(
        "#SITEX --mem={{ resources.mem | mem }} --name={{ job_name }}\n")
    dist = tmp_path / "site" / "sitex_dialect-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sitex-dialect\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[hpcnn.dialects]\nsitex = sitex_dialect:SiteDialect\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    _registry.cache_clear()
    yield "sitex"
    _registry.cache_clear()
    sys.modules.pop("sitex_dialect", None)


def test_a_site_registers_its_own_dialect(site_dialect: str, tmp_path: Path) -> None:
    from hpcnn.jobs.script import render_job
    from hpcnn.schedulers import dialect_names, get_dialect

    assert site_dialect in dialect_names()
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent("""\
        cluster: {scheduler: sitex, host: h}
        resources: {mem: 2gb}
        """))
    cfg = load_config_file(path)
    dialect = get_dialect(cfg.cluster.scheduler)
    text = render_job(cfg, dialect, fold_job(cfg, 0))
    assert "#SITEX --mem=2048MiB --name=hpcnn-501-nnUNetTrainer-3d_fullres-f0-a1" in text
    assert "jobid=${SITEX_JOB:-${SLURM_JOB_ID:-}}" in text


def test_states_vocabulary_is_closed() -> None:
    """Every state a fold can show is one of design.md's words."""
    assert {s.value for s in JobState} == {
        "pending", "queued", "held", "running", "timeout", "completed", "failed", "cancelled",
        "lost", "unknown"}


@pytest.mark.parametrize("dirs", [
    ["/home/u/my data 'x' \"y\" $(touch canary)/.hpcnn/jobs/r/a1",
     "/home/u/my data 'x' \"y\" $(touch canary)/.hpcnn/jobs/r/b 2"],
    ["rel/jobs/a", "rel/jobs/b"],
    ["/abs/a", "rel/b"],
    ["/only/one"],
    ["/a/x", "/b/y"],
    ["/s/link/../j1", "/s/j2"],
    ["/s/./j1", "/s/j2"],
])
def test_job_folders_travel_as_short_words_that_expand_to_themselves(
        dirs: list[str], tmp_path: Path) -> None:
    """A poll names each job folder once by its part after their common text; the shell
    gives back exactly the folders, whatever their characters, and runs nothing in them."""
    import subprocess

    from hpcnn.jobs.engine import dir_words

    assign, words = dir_words(dirs, "_base")
    line = f"{assign}; for d in {' '.join(words)}; do printf '%s\\0' \"$d\"; done"
    out = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    assert out.split("\0")[:-1] == dirs
    assert not (tmp_path / "canary").exists()
    if len(dirs) > 1 and dirs[0].startswith("/home/u/my data"):
        assert sum(len(w) for w in words) < sum(len(d) for d in dirs) / 4
    if dirs == ["rel/jobs/a", "rel/jobs/b"]:  # only the differing text travels per folder
        assert words == ['"$_base"a', '"$_base"b']
