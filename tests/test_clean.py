"""``hpcnn clean``: hpcnn's remote copies of a run's inputs go after a confirmation; results stay
unless asked for (and folds never synced only when their loss is confirmed); nothing outside
remote_dir, nothing while the run has jobs queued or running, nothing with the local scheduler.
The images of prediction jobs nobody came back to go once their job ended; their never-fetched
results are kept like never-synced folds, and ``--attach`` says when clean removed them.

The fast tests drive a "cluster" whose commands run on this machine (a remote_dir of spaces,
quotes and ``$(...)``); the test-bed tests push through SSH to the real sshd + Slurm and make
jobs cheaply (registry rows, a ``sleep`` job through the job engine), never training.
"""

from __future__ import annotations

import io
import re
import shlex
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from runs_helper import record_run

from hpcnn.errors import ConfigError
from hpcnn.jobs.model import FOLD, PREDICT, Run, job_name
from hpcnn.nnunet.launcher import INFERENCE
from hpcnn.remote.base import Connection, Result
from hpcnn.services.clean import CleanPlan, Found, Item, apply_clean, checked, plan_clean
from hpcnn.services.session import Session
from hpcnn.state import JobRow

pytest_plugins = ("testbed_train",)  # the test bed's shared fixtures

DATASET = "Dataset501_Tiny"
RUN = Run(DATASET, "nnUNetTrainer", "nnUNetPlans", "3d_fullres")


def record_fold(session: Session, run: Run, fold: int, state: str = "completed") -> JobRow:
    """A fold job as train-all-folds records it, in a finished ``state``."""
    name = job_name(run.id, fold)
    return session.registry.add(JobRow(
        name=name, run=run.id, kind=FOLD, fold=fold, job_dir=session.remote.job_dir(run.id, name),
        scheduler=session.dialect.name, state=state, scheduler_id=str(1000 + fold), exit_code=0))


# ---- fast: a cluster whose commands run here


@dataclass
class Cluster:
    ws: Path
    remote: Path
    config: Path

    def session(self) -> Session:
        from hpcnn.config import load_config_file

        return Session(load_config_file(self.config))

    @property
    def copy(self) -> Path:
        return self.remote / "nnUNet_preprocessed" / DATASET

    def results(self, fold: int) -> Path:
        return self.remote / "nnUNet_results" / RUN.results_folder / f"fold_{fold}"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """A workspace with a preprocessed dataset and a cluster.yaml for a Slurm cluster whose
    connection runs the commands on this machine."""
    from hpcnn.remote.local import LocalConnection

    ws = tmp_path / "ws"
    data = ws / "nnUNet_preprocessed" / DATASET
    (data / "nnUNetPlans_3d_fullres").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    (data / "nnUNetPlans_3d_fullres" / "case_000.b2nd").write_bytes(b"x" * 50_000)
    remote = tmp_path / "cluster home" / "it's \"$(touch PWNED)\" dir"
    config = ws / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "workspace": str(ws),
        "cluster": {"scheduler": "slurm", "host": "cluster", "remote_dir": str(remote)}}))
    monkeypatch.setattr("hpcnn.remote.connect", lambda cfg: LocalConnection())
    monkeypatch.chdir(ws)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "HPCNN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return Cluster(ws, remote, config)


def trained(c: Cluster, folds: dict[int, int | None], inference: Collection[int] = ()) -> None:
    """The run pushed, and each fold completed with a final checkpoint there (and for the folds
    in ``inference`` the launcher's inference checkpoint of 1400 bytes); ``folds`` maps a fold to
    the size of its local checkpoint (None: never synced)."""
    from hpcnn.services.train import push_run

    with c.session() as s:
        record_run(s, RUN)
        push_run(s, RUN, echo=lambda line: None)
        for fold, local in folds.items():
            row = record_fold(s, RUN, fold)
            Path(row.job_dir).mkdir(parents=True)
            (Path(row.job_dir) / "out.log").write_text("trained\n")
            c.results(fold).mkdir(parents=True)
            (c.results(fold) / "checkpoint_final.pth").write_bytes(b"w" * 3000)
            if fold in inference:
                (c.results(fold) / INFERENCE).write_bytes(b"i" * 1400)
            if local is not None:
                mine = c.ws / "nnUNet_results" / RUN.results_folder / f"fold_{fold}"
                mine.mkdir(parents=True)
                (mine / "checkpoint_final.pth").write_bytes(b"w" * local)


def test_clean_lists_asks_removes_the_copy_once_and_keeps_results(cluster: Cluster,
                                                                   hpcnn) -> None:
    trained(cluster, {0: 3000, 1: None})
    config = ("--config", str(cluster.config))
    code, out, _ = hpcnn(*config, "clean", "--dry-run")
    assert code == 0 and "dry run" in out, out
    line = next(x for x in out.splitlines() if f"nnUNet_preprocessed/{DATASET}" in x)
    assert line.split()[0] == "remove" and re.search(r" \d+(\.\d+)? kB ", line), out
    assert "kept without --include-results" in out and cluster.copy.is_dir()

    code, _, err = hpcnn(*config, "clean")  # pytest's stdin is no terminal
    assert code == 2 and "no terminal" in err and "--yes" in err, err
    assert cluster.copy.is_dir()

    code, out, _ = hpcnn(*config, "clean", "--yes")
    assert code == 0 and f"removed {cluster.copy}" in out, out
    assert not cluster.copy.exists()
    assert (cluster.results(0) / "checkpoint_final.pth").is_file()
    assert (cluster.results(1) / "checkpoint_final.pth").is_file()
    assert (cluster.remote / ".hpcnn" / "runs" / RUN.id).is_dir()
    assert (cluster.remote / ".hpcnn" / "lib" / "launcher.py").is_file()
    assert not list(cluster.ws.parent.rglob("PWNED")) and not (cluster.ws / "PWNED").exists()
    with cluster.session() as s:
        cleaned = [t for t in s.registry.transfers(RUN.id) if t["direction"] == "clean"]
    assert [t["source"] for t in cleaned] == [str(cluster.copy)] and cleaned[0]["bytes"] > 0

    code, out, _ = hpcnn(*config, "clean", "--yes")
    assert code == 0 and "nothing to remove" in out, out

    with cluster.session() as s:  # the next push copies the dataset again
        from hpcnn.services.train import push_run

        push_run(s, RUN, echo=lambda line: None)
    assert (cluster.copy / "nnUNetPlans_3d_fullres" / "case_000.b2nd").stat().st_size == 50_000


def test_include_results_takes_synced_folds_and_asks_for_the_others(cluster: Cluster,
                                                                    hpcnn) -> None:
    # fold 2's local copy is not the final one; fold 4's is the inference one sync brings
    trained(cluster, {0: 3000, 1: None, 2: 2999, 4: 1400}, inference={4})
    with cluster.session() as s:  # fold 3 failed: a checkpoint_latest and no final one
        record_fold(s, RUN, 3, "failed")
    cluster.results(3).mkdir()
    (cluster.results(3) / "checkpoint_latest.pth").write_bytes(b"l" * 100)
    code, out, _ = hpcnn("--config", str(cluster.config), "clean", "--yes",
                         "--include-results")
    assert code == 0, out
    assert not cluster.results(0).exists() and not cluster.copy.exists()
    assert not cluster.results(4).exists()
    assert all(cluster.results(f).is_dir() for f in (1, 2, 3))
    assert "never-synced results of fold(s) 1, 2, 3" in out, out
    assert "results of fold 3 (not finished), never synced here: kept under --yes" in out, out
    assert (cluster.remote / ".hpcnn" / "runs" / RUN.id).is_dir(), "logs stay with kept folds"

    with cluster.session() as s:
        plan = plan_clean(s, include_results=True)
        assert [f.item.fold for f in plan.unsynced] == [1, 2, 3] and not plan.remove
        apply_clean(s, plan, unsynced=True)  # what a confirmation on a terminal does
    assert not any(cluster.results(f).exists() for f in range(5))
    assert not (cluster.remote / ".hpcnn" / "runs" / RUN.id).exists()
    assert (cluster.remote / ".hpcnn" / "lib").is_dir()


class Terminal(io.StringIO):
    """A terminal the user answers on: one line per question."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_never_synced_results_go_only_when_confirmed(
        cluster: Cluster, hpcnn, monkeypatch: pytest.MonkeyPatch) -> None:
    trained(cluster, {0: 3000, 1: None})
    config = ("--config", str(cluster.config), "clean", "--include-results")
    monkeypatch.setattr("sys.stdin", Terminal("n\nn\n"))
    code, out, err = hpcnn(*config)
    assert code == 1 and "aborted" in err, out + err  # the final question answered no
    assert "fold(s) 1 were never synced" in out and cluster.copy.is_dir()
    assert cluster.results(0).is_dir()

    monkeypatch.setattr("sys.stdin", Terminal("n\ny\n"))  # keep fold 1, remove the rest
    code, out, _ = hpcnn(*config)
    assert code == 0 and "Remove 2 folder(s)" in out, out
    assert not cluster.copy.exists() and not cluster.results(0).exists()
    assert cluster.results(1).is_dir() and (cluster.remote / ".hpcnn" / "runs").is_dir()

    monkeypatch.setattr("sys.stdin", Terminal("y\ny\n"))  # its loss confirmed
    code, out, _ = hpcnn(*config)
    assert code == 0 and not cluster.results(1).exists(), out
    assert not (cluster.remote / ".hpcnn" / "runs" / RUN.id).exists()


def predicted(c: Cluster, pid: str, state: str, record: str | None = "submitted") -> Path:
    """A prediction job of the run as ``predict --on-cluster`` records it (registry row, and
    ``.hpcnn/predict/<pid>.json`` unless ``record`` is None), its job in ``state``, and its
    folder on the cluster: the staged images and what the job wrote."""
    from hpcnn.services.predict import Request, predictions_dir

    with c.session() as s:
        name = job_name(RUN.id, None, kind=f"{PREDICT}-{pid}")
        s.registry.add(JobRow(name=name, run=RUN.id, kind=PREDICT,
                              job_dir=s.remote.job_dir(RUN.id, name), scheduler=s.dialect.name,
                              state=state, scheduler_id=str(int(pid, 16) % 10_000)))
        folder = Path(s.remote.predict_dir(pid))
        if record is not None:
            predictions_dir(s).mkdir(parents=True, exist_ok=True)
            Request(id=pid, run=RUN.id, host=s.host, job=name, model="m", dataset_json={},
                    folds=["0"], fast=True, fmt=None, output=str(c.ws / f"out-{pid}"), cases=[],
                    remote_dir=str(folder), state=record).save(predictions_dir(s))
    (folder / "input").mkdir(parents=True)
    (folder / "input" / "case_000_0000.nrrd").write_bytes(b"p" * 20_000)  # a patient image
    if state == "completed":
        (folder / "output").mkdir()
        (folder / "output" / "case_000.nrrd").write_bytes(b"s" * 9_000)
    return folder


def record_state(c: Cluster, pid: str) -> str:
    import json

    return json.loads((c.ws / ".hpcnn" / "predict" / f"{pid}.json").read_text())["state"]


@pytest.fixture
def scheduler_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler answers that every job is as the registry has it (no squeue here)."""
    monkeypatch.setattr("hpcnn.jobs.engine.refresh",
                        lambda registry, conn, dialect, rows, **kw: (rows, {}, True, []))


def test_clean_removes_the_images_of_ended_predictions_and_keeps_what_is_not_fetched(
        cluster: Cluster, hpcnn, scheduler_agrees: None) -> None:
    trained(cluster, {0: 3000})
    unfetched = predicted(cluster, "0000000a", "completed")
    failed = predicted(cluster, "0000000b", "failed")
    running = predicted(cluster, "0000000c", "running")
    fetched = predicted(cluster, "0000000d", "completed", record="done")  # its rm was lost
    unknown = predicted(cluster, "0000000e", "cancelled", record=None)  # registry row only
    config = ("--config", str(cluster.config))
    code, out, _ = hpcnn(*config, "clean", "--dry-run")
    assert code == 0, out
    lines = {x.split()[1]: x for x in out.splitlines() if ".hpcnn/predict/" in x}
    assert lines[".hpcnn/predict/0000000a/input"].split()[0] == "remove", out
    assert lines[".hpcnn/predict/0000000a"].split()[0] == "keep", out
    assert "results never fetched: `hpcnn predict --attach 0000000a` first" in out, out
    assert "kept without --include-results" in lines[".hpcnn/predict/0000000a"], out
    for pid in ("0000000b", "0000000d", "0000000e"):
        assert lines[f".hpcnn/predict/{pid}"].split()[0] == "remove", out
    keep = lines[".hpcnn/predict/0000000c"]
    assert keep.split()[0] == "keep" and "is running" in keep, out
    assert all(f.is_dir() for f in (unfetched, failed, running, fetched, unknown))

    code, out, _ = hpcnn(*config, "clean", "--yes")  # a running prediction blocks nothing else
    assert code == 0, out
    assert not cluster.copy.exists()
    assert not (unfetched / "input").exists() and (unfetched / "output").is_dir()
    assert not failed.exists() and not fetched.exists() and not unknown.exists()
    assert (running / "input" / "case_000_0000.nrrd").is_file()
    assert (record_state(cluster, "0000000a"), record_state(cluster, "0000000b"),
            record_state(cluster, "0000000d")) == ("submitted", "cleaned", "done")
    with cluster.session() as s:
        cleaned = {t["source"] for t in s.registry.transfers(RUN.id)
                   if t["direction"] == "clean"}
    assert {str(failed), str(unfetched / "input")} <= cleaned, cleaned

    code, out, err = hpcnn(*config, "predict", "--attach", "0000000b")
    assert code == 1 and "Traceback" not in out + err, out + err
    assert "`hpcnn clean` removed its images and results" in err and "job " in err, err
    assert "predict --on-cluster` again" in err, err


def test_never_fetched_prediction_results_go_only_when_confirmed_and_attach_says_so(
        cluster: Cluster, hpcnn, scheduler_agrees: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    trained(cluster, {0: 3000})
    unfetched = predicted(cluster, "0000000a", "completed")
    running = predicted(cluster, "0000000c", "queued")
    config = ("--config", str(cluster.config), "clean", "--include-results")
    code, out, _ = hpcnn(*config, "--yes")
    assert code == 0, out
    assert "never-fetched results of prediction(s) 0000000a" in out, out
    assert (unfetched / "output").is_dir() and not (unfetched / "input").exists()
    assert running.is_dir() and cluster.results(0).is_dir(), "a queued prediction reads them"
    assert "prediction(s) 0000000c read them" in out, out
    assert (cluster.remote / ".hpcnn" / "runs" / RUN.id).is_dir()
    assert record_state(cluster, "0000000a") == "submitted"

    with cluster.session() as s:  # the queued prediction is cancelled
        s.registry.update(job_name(RUN.id, None, kind=f"{PREDICT}-0000000c"), state="cancelled")
    monkeypatch.setattr("sys.stdin", Terminal("y\ny\n"))  # the loss confirmed
    code, out, _ = hpcnn(*config)
    assert code == 0 and "prediction(s) 0000000a were never fetched" in out, out
    assert not unfetched.exists() and not running.exists() and not cluster.results(0).exists()
    assert not (cluster.remote / ".hpcnn" / "runs" / RUN.id).exists()
    assert record_state(cluster, "0000000a") == "cleaned"
    code, out, err = hpcnn("--config", str(cluster.config), "predict", "--attach", "0000000a")
    assert code == 1 and "Traceback" not in out + err, out + err
    assert "removed its images and results" in err and "out-0000000a" in err, err


def test_a_prediction_never_recorded_as_submitted_is_kept(cluster: Cluster) -> None:
    """hpcnn stopped between the scheduler's answer and the registry: the job may run."""
    trained(cluster, {0: 3000})
    folder = predicted(cluster, "0000000f", "pending")
    with cluster.session() as s:
        s.registry.update(job_name(RUN.id, None, kind=f"{PREDICT}-0000000f"), scheduler_id=None)
        plan = plan_clean(s, include_results=True)
    assert not [f for f in plan.targets(unsynced=True) if f.item.prediction]
    kept = next(k for k in plan.kept if k.rel == ".hpcnn/predict/0000000f")
    assert "--attach 0000000f" in kept.why and folder.is_dir()
    assert not [f for f in plan.targets(unsynced=True) if f.item.fold is not None]


@pytest.mark.parametrize(("root", "path"), [
    ("/", "/etc"),
    ("", "/x/y"),
    ("hpcnn", "hpcnn/nnUNet_raw"),
    ("/home/u/hpcnn", "/home/u/hpcnn"),
    ("/home/u/hpcnn", "/home/u/hpcnn/"),
    ("/home/u/hpcnn", ""),
    ("/home/u/hpcnn", "/home/u/hpcnn/../other"),
    ("/home/u/hpcnn", "/home/u/hpcnn-other/x"),
    ("/home/u/hpcnn", "/etc/passwd"),
    ("/home/u/hpcnn/", "/home/u/hpcnn/x"),
])
def test_paths_that_are_not_inside_remote_dir_are_refused(root: str, path: str) -> None:
    with pytest.raises(ConfigError, match="refusing to remove"):
        checked(root, path)


def test_checked_keeps_paths_inside_remote_dir() -> None:
    assert checked("/home/u/my hpcnn", "/home/u/my hpcnn/nnUNet_raw/D") == \
        "/home/u/my hpcnn/nnUNet_raw/D"


class Recording(Connection):
    """A connection that records command lines and runs nothing."""

    description = "recording"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _run(self, line: str, *, stdin: str | None, timeout: float | None) -> Result:
        self.lines.append(line)
        return Result("", "", 0)

    def put(self, local: Path, remote: str) -> None:
        raise AssertionError("no transfer")

    get = push_tree = pull_tree = put  # type: ignore[assignment]


@pytest.mark.parametrize(("root", "path"), [("/", "/nnUNet_raw/D"),
                                            ("/r/hpcnn", "/r/other/nnUNet_raw/D"),
                                            ("/r/hpcnn", "/r/hpcnn/../../etc")])
def test_apply_refuses_a_plan_outside_remote_dir_before_any_command(
        cluster: Cluster, root: str, path: str) -> None:
    conn = Recording()
    with cluster.session() as s:
        s._conn = conn
        good = Found(Item("nnUNet_raw/A", "a"), f"{root.rstrip('/')}/nnUNet_raw/A", 1)
        plan = CleanPlan(RUN, "cluster", root, remove=[good, Found(Item("x", "x"), path, 1)])
        with pytest.raises(ConfigError, match="refusing to remove"):
            apply_clean(s, plan)
        assert conn.lines == [] and s.registry.transfers() == []
        s._conn = None


def test_apply_quotes_every_path_in_one_command(cluster: Cluster) -> None:
    conn = Recording()
    root = "/r/it's $(x)"
    with cluster.session() as s:
        s._conn = conn
        paths = [f"{root}/nnUNet_raw/{DATASET}", f"{root}/.hpcnn/runs/{RUN.id}"]
        plan = CleanPlan(RUN, "cluster", root,
                         remove=[Found(Item(p, p), p, 10) for p in paths])
        apply_clean(s, plan)
        s._conn = None
    assert conn.lines == [f"rm -rf -- {' '.join(shlex.quote(p) for p in paths)}"]


def test_a_missing_remote_dir_has_nothing_to_remove(cluster: Cluster, hpcnn) -> None:
    with cluster.session() as s:
        record_run(s, RUN)
    code, out, _ = hpcnn("--config", str(cluster.config), "clean", "--yes", "--include-results")
    assert code == 0 and "nothing to remove" in out, out
    assert not cluster.remote.exists()


def test_the_local_scheduler_has_no_remote_copy_and_removes_nothing(workspace: Path,
                                                                     hpcnn) -> None:
    from hpcnn.config import load_config

    data = workspace / "nnUNet_preprocessed" / DATASET
    data.mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    with Session(load_config()) as s:
        record_run(s, RUN)
        record_fold(s, RUN, 0)
    code, out, _ = hpcnn("clean", "--yes", "--include-results")
    assert code == 0 and "no remote copy, nothing to remove" in out, out
    assert (data / "dataset.json").is_file()


# ---- the real test bed: sshd + Slurm (Torque wrappers)


@pytest.fixture
def bed(testbed, ssh_config, tiny_dataset, testbed_environment, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    from testbed_train import make_bed

    b = make_bed(tmp_path, tiny_dataset, testbed, ssh_config, testbed_environment)
    monkeypatch.setenv("HPCNN_SSH_CONFIG", str(ssh_config))
    yield b
    b.remove_remote()


def _bed_session(b) -> Session:  # noqa: ANN001 - testbed_train.Bed
    from hpcnn.config import load_config_file

    return Session(load_config_file(b.config))


@pytest.mark.testbed
def test_on_the_test_bed_clean_removes_the_pushed_copy_and_push_brings_it_back(bed) -> None:
    from testbed_train import TINY, remote_sha256, sha256

    with _bed_session(bed) as s:  # a finished run; the push below is not anchored (relative)
        run = s.new_run()
        assert run.trainer == TINY
        record_run(s, run)
        record_fold(s, run, 0)
    res = bed.cli("push")
    assert res.returncode == 0, res.stdout + res.stderr
    folder = f"nnUNet_results/{run.results_folder}/fold_0"
    bed.remote(f"mkdir -p {shlex.quote(folder)} && head -c 2048 /dev/zero > "
               f"{shlex.quote(folder)}/checkpoint_final.pth")
    copy = f"nnUNet_preprocessed/{DATASET}"
    assert remote_sha256(bed, copy)

    res = bed.cli("clean")
    assert res.returncode == 2 and "--yes" in res.stderr, res.stdout + res.stderr
    res = bed.cli("clean", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "removed /" in res.stdout and copy in res.stdout
    assert bed.remote(f"test -e {copy} && echo there; true").strip() == ""
    assert bed.remote(f"wc -c < {shlex.quote(folder)}/checkpoint_final.pth").strip() == "2048"
    assert bed.remote("test -f .hpcnn/lib/launcher.py && echo ok").strip() == "ok"
    res = bed.cli("clean", "--yes")
    assert res.returncode == 0 and "nothing to remove" in res.stdout, res.stdout + res.stderr

    res = bed.cli("push")
    assert res.returncode == 0, res.stdout + res.stderr
    local = bed.ws / "nnUNet_preprocessed" / DATASET
    assert remote_sha256(bed, copy) == {str(p.relative_to(local)): sha256(p)
                                        for p in local.rglob("*")
                                        if p.is_file() and p.name != "cases.csv"}


@pytest.mark.testbed
def test_on_the_test_bed_a_run_with_a_live_job_is_refused_and_its_dataset_kept(bed) -> None:
    """Run ``busy`` has a fold job (``sleep``) on the queue: cleaning it is refused with the job
    and the fix; cleaning the finished run of the same dataset keeps the copy ``busy`` reads,
    until ``hpcnn cancel`` ends the job."""
    from hpcnn.jobs import engine
    from hpcnn.jobs.model import JobSpec
    from hpcnn.jobs.script import render_job
    from hpcnn.services.train import anchor_remote_dir

    with _bed_session(bed) as s:
        anchor_remote_dir(s)
        done, busy = s.new_run(), s.new_run(trainer="nnUNetTrainer")
        record_run(s, done)
        record_run(s, busy)
        record_fold(s, done, 0)
        name, dialect, layout = job_name(busy.id, 0), s.dialect, s.remote
        spec = JobSpec(run=busy.id, name=name, job_dir=layout.job_dir(busy.id, name),
                       commands=[["sleep", "600"]], kind=FOLD, fold=0,
                       path_env=layout.nnunet_env())
        s.registry.add(JobRow(name=name, run=busy.id, kind=FOLD, fold=0, job_dir=spec.job_dir,
                              scheduler=dialect.name, state="queued"))
        job_id = engine.submit(s.conn, dialect, render_job(s.cfg, dialect, spec), spec.job_dir)
        s.registry.update(name, scheduler_id=job_id, submitted_at=time.time())
    try:
        assert bed.cli("push").returncode == 0  # recorded for `done`, the most recent spec
        res = bed.cli("clean", "--yes", "--run", busy.id)
        assert res.returncode == 10, res.stdout + res.stderr
        assert name in res.stderr and job_id in res.stderr, res.stderr
        assert f"hpcnn cancel --run {busy.id}" in res.stderr

        res = bed.cli("clean", "--yes", "--run", done.id)
        assert res.returncode == 0, res.stdout + res.stderr
        keep = next(line for line in res.stdout.splitlines()
                    if f"nnUNet_preprocessed/{DATASET}" in line)
        assert keep.split()[0] == "keep" and busy.id in keep, res.stdout
        assert "removed" not in res.stdout
        assert bed.remote(f"test -d nnUNet_preprocessed/{DATASET} && echo ok").strip() == "ok"
    finally:
        assert bed.cli("cancel", "--yes", "--run", busy.id).returncode == 0
    res = bed.cli("clean", "--yes", "--run", done.id)
    assert res.returncode == 0 and "removed" in res.stdout, res.stdout + res.stderr
    assert bed.remote(f"test -e nnUNet_preprocessed/{DATASET} && echo there; true").strip() == ""
