"""train-all-folds, push and status when things go wrong on the real test bed: each fault gives
a clear message and loses nothing. None of these trains a model: faults are found before a job
runs, or the jobs are tiny shell commands submitted through the job engine as the services do."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from testbed_train import HPCNN, Bed, make_bed, remote_sha256, sha256

pytestmark = pytest.mark.testbed
pytest_plugins = ("testbed_train",)  # the shared fixtures

NODE_FULL = "Requested node configuration is not available"


@pytest.fixture
def bed(testbed, ssh_config, tiny_dataset, testbed_environment,
        tmp_path: Path):
    made: list[Bed] = []

    def make(**kwargs: object) -> Bed:
        made.append(make_bed(tmp_path / f"bed{len(made)}", tiny_dataset, testbed, ssh_config,
                             testbed_environment, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for b in made:
        b.remove_remote()


def _exists(bed: Bed) -> bool:
    import shlex

    from conftest import testbed_ssh

    res = subprocess.run([*testbed_ssh(bed.testbed), f"test -e {shlex.quote(bed.remote_dir)}"],
                         capture_output=True, check=False, timeout=60)
    return res.returncode == 0


def test_qsub_refusing_a_job_shows_its_message_and_records_nothing(bed) -> None:
    b = bed()
    res = b.cli("train-all-folds", "--folds", "0", "--gpus", "3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert NODE_FULL in res.stderr and "refused job" in res.stderr, res.stderr
    assert "submitted fold" not in res.stdout
    runs = b.cli("runs").stdout
    assert "f0:" not in runs, runs  # no job recorded, not even as an intent
    assert b.remote("ls .hpcnn/runs/*/ 2>/dev/null | grep -c -- -f0-a2; true").strip() in ("", "0")


def test_a_dataset_that_is_not_preprocessed_is_named_with_the_fix(bed) -> None:
    import shutil

    b = bed()
    shutil.rmtree(b.ws / "nnUNet_preprocessed" / "Dataset501_Tiny" / "nnUNetPlans_3d_fullres")
    (b.ws / "nnUNet_preprocessed" / "Dataset501_Tiny" / "nnUNetPlans.json").unlink()
    res = b.cli("train-all-folds")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Dataset501_Tiny is not preprocessed here" in res.stderr
    assert "hpcnn preprocess Dataset501_Tiny" in res.stderr
    assert not _exists(b)  # nothing pushed, nothing submitted


def test_another_nnunetv2_on_the_cluster_is_refused_with_the_fix(bed) -> None:
    b = bed()
    provenance = b.ws / "nnUNet_preprocessed" / "Dataset501_Tiny" / "hpcnn_provenance.json"
    data = json.loads(provenance.read_text())
    data["nnunetv2_version"] = "2.0.0"
    provenance.write_text(json.dumps(data))
    res = b.cli("train-all-folds")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "preprocessed with nnunetv2 2.0.0, but testbed has" in res.stderr, res.stderr
    assert "nnunetv2==2.0.0" in res.stderr
    assert "no runs yet" in b.cli("runs").stdout


def test_a_push_whose_ssh_is_killed_completes_next_time(bed) -> None:
    """The ssh under rsync killed as soon as it is seen: the push fails with a message, the
    next one completes, and every file there is the one here."""
    b = bed()
    big = b.ws / "nnUNet_preprocessed" / "Dataset501_Tiny" / "big.bin"
    with open(big, "wb") as out:
        for _ in range(64):
            out.write(os.urandom(4 << 20))
    env = {**os.environ, "HPCNN_SSH_CONFIG": str(b.ssh_config)}
    push = subprocess.Popen([*HPCNN, "--config", str(b.config),
                             "push"], cwd=b.ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    killed = None
    deadline = time.time() + 120
    while killed is None and push.poll() is None and time.time() < deadline:
        for line in subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True,
                                   text=True, check=False).stdout.splitlines()[1:]:
            pid, ppid, args = line.split(None, 2)
            if (args.split()[0].endswith("ssh") and _comm(int(ppid)) == "rsync"
                    and _descends(int(ppid), push.pid)):
                os.kill(int(pid), signal.SIGKILL)
                killed = args
                break
        time.sleep(0.02)
    out, err = push.communicate(timeout=120)
    assert killed, f"no rsync ssh seen: {out} {err}"
    assert push.returncode != 0 and err.strip(), out + err
    res = b.cli("push")
    assert res.returncode == 0, res.stdout + res.stderr
    remote = remote_sha256(b, "nnUNet_preprocessed/Dataset501_Tiny")
    local_dir = big.parent
    local = {str(p.relative_to(local_dir)): sha256(p) for p in local_dir.rglob("*")
             if p.is_file() and p.name != "cases.csv"}
    assert remote == local


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def test_status_tells_completed_failed_running_queued_and_lost_apart(bed, monkeypatch) -> None:
    """One run, built as train-all-folds builds it (registry rows, then the job engine), with
    tiny shell jobs: fold 0 completes, 1 fails (CUDA out of memory), 2 runs, 3 waits for 2,
    and 4's job left the scheduler without a marker (an id the scheduler no longer knows)."""
    import random

    from hpcnn.config import load_config_file
    from hpcnn.jobs import engine
    from hpcnn.jobs.model import FOLD, JobSpec, job_name
    from hpcnn.jobs.script import render_job
    from hpcnn.schedulers.base import Dependency
    from hpcnn.services.session import Session
    from hpcnn.services.train import anchor_remote_dir
    from hpcnn.state import JobRow

    b = bed(status={"lost_grace": "5s"})
    monkeypatch.setenv("HPCNN_SSH_CONFIG", str(b.ssh_config))
    cfg = load_config_file(b.config)
    oom = "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate' >&2; exit 3"
    with Session(cfg) as session:
        anchor_remote_dir(session)
        run, layout, dialect = session.new_run(), session.remote, session.dialect
        session.record_run(run, folds=[0, 1, 2, 3, 4])
        ids: dict[int, str] = {}
        for fold, commands in ((0, [["true"]]), (1, [["sh", "-c", oom]]),
                               (2, [["sleep", "600"]]), (3, [["true"]]), (4, None)):
            name = job_name(run.id, fold)
            spec = JobSpec(run=run.id, name=name, job_dir=layout.job_dir(run.id, name),
                           commands=commands or [], kind=FOLD, fold=fold,
                           path_env=layout.nnunet_env())
            session.registry.add(JobRow(name=name, run=run.id, kind=FOLD, fold=fold,
                                        job_dir=spec.job_dir, scheduler=dialect.name,
                                        state="pending"))
            if commands is None:
                ids[fold] = str(random.randint(10**6, 10**7))  # gone, no marker
            else:
                deps = [Dependency(ids[2], "afterok")] if fold == 3 else []
                ids[fold] = engine.submit(session.conn, dialect,
                                          render_job(cfg, dialect, spec), spec.job_dir, deps)
            session.registry.update(name, scheduler_id=ids[fold], state="queued",
                                    submitted_at=time.time())
    want = ["completed", "failed", "running", "queued", "lost"]
    deadline = time.time() + 120
    while True:
        code, status = b.status()
        states = [f["state"] for f in status["folds"]]
        if states == want or time.time() > deadline:
            break
        time.sleep(3)
    try:
        assert states == want and code == 11, status
        folds = status["folds"]
        assert [f["job_id"] for f in folds] == [ids[f] for f in range(5)]
        assert folds[0]["exit_code"] == 0 and folds[1]["exit_code"] == 3
        assert "CUDA out of memory" in folds[1]["error_tail"]
        assert "GPU ran out of memory" in folds[1]["hint"]
        assert folds[2]["node"] == b.testbed["TESTBED_NODE"] and folds[3]["node"] in ("", None)
        assert "without an exit marker" in folds[4]["hint"]
        monkeypatch.setenv("COLUMNS", "200")  # rich's table, unwrapped
        table = b.cli("status")
        assert table.returncode == 11
        for fold, state in enumerate(want):
            assert re.search(rf"│ {fold}\s+│ {state}", table.stdout), table.stdout
        assert "fix: the GPU ran out of memory" in table.stdout
    finally:
        b.cli("cancel", "--yes")
