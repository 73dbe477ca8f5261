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
from testbed_train import HPCNN, Bed, make_bed, remote_sha256, sha256, submit_fold_jobs

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
    b = bed(status={"lost_grace": "5s"})
    monkeypatch.setenv("HPCNN_SSH_CONFIG", str(b.ssh_config))
    oom = "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate' >&2; exit 3"
    _, ids = submit_fold_jobs(b, {0: [["true"]], 1: [["sh", "-c", oom]], 2: [["sleep", "600"]],
                                  3: [["true"]], 4: None}, after={3: 2})
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
        monkeypatch.setenv("COLUMNS", "200")  # the table, unwrapped
        table = b.cli("status")
        assert table.returncode == 11
        for fold, state in enumerate(want):
            assert re.search(rf"(?m)^\s*{fold}\s+{re.escape(state)}\b", table.stdout), table.stdout
        assert "fix: the GPU ran out of memory" in table.stdout
    finally:
        b.cli("cancel", "--yes")


# ---- submitting: two at once, the controller gone half-way, a full disk, names with spaces

# True for hpcnn's own checks over SSH, false inside a Slurm job: the fold jobs end at once (a
# failed environment line, exit 97) so that these tests submit real chains and train nothing.
NO_TRAINING = '[ -z "${SLURM_JOB_ID:-}" ]'


def _submitted(b: Bed) -> dict[str, str]:
    """The run's job folders on the cluster and the id the scheduler gave each (its answer,
    kept beside job.sh)."""
    out = b.remote("for d in .hpcnn/runs/*/*/; do [ -f \"$d/submitted\" ] && printf '%s %s\\n' "
                   "\"$(basename \"$d\")\" \"$(tr -d '\\n' < \"$d/submitted\")\"; done; true")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def _queue_names(b: Bed) -> list[str]:
    """Every job the controller knows (finished ones too) submitted from a job folder of this
    bed's remote_dir, by that folder's name (hpcnn's job name; torque's is cut to 15 chars)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-u", b.testbed["TESTBED_USER"], "-o",
                          "%Z"], capture_output=True, text=True, check=True).stdout
    return [Path(line).name for line in out.split() if f"/{b.remote_dir}/.hpcnn/runs/" in line]


def _assert_each_fold_submitted_once(b: Bed, folds: int = 5, attempts: int = 2) -> None:
    jobs = _submitted(b)
    runs = {name.rsplit("-f", 1)[0] for name in jobs}
    assert len(runs) == 1, jobs
    run = runs.pop()
    want = {f"{run}-f{f}-a{a}" for f in range(folds) for a in range(1, attempts + 1)}
    assert set(jobs) == want and len(set(jobs.values())) == len(want), jobs
    names = _queue_names(b)
    assert sorted(names) == sorted(want), "each job submitted exactly once"


def test_two_train_all_folds_at_once_submit_each_fold_once(bed, testbed_environment) -> None:
    b = bed(environment={"setup": [*testbed_environment, NO_TRAINING]})
    env = {**os.environ, "HPCNN_SSH_CONFIG": str(b.ssh_config)}
    procs = [subprocess.Popen([*HPCNN, "--config", str(b.config), "train-all-folds"], cwd=b.ws,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    try:
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 12], outs
        second = outs[[p.returncode for p in procs].index(12)]
        assert "another hpcnn is submitting run" in second[1], second
        assert "submitted fold" not in second[0], second
        _assert_each_fold_submitted_once(b)
        again = b.cli("train-all-folds")
        assert again.returncode == 0 and "submitted fold" not in again.stdout, again.stdout
        _assert_each_fold_submitted_once(b)
    finally:
        b.cli("cancel", "--yes")


def test_the_controller_stopping_mid_submit_is_named_and_the_rerun_submits_the_rest(
        bed, testbed_environment) -> None:
    """slurmctld shut down once the first jobs are in its queue: train-all-folds says the
    scheduler did not answer; with the controller back, the next train-all-folds submits only the
    jobs that are missing, each exactly once."""
    from conftest import need
    from test_remote_zz_scheduler_down import UP, controller_up

    need(os.geteuid() == 0, "stopping slurmctld needs root (the test bed's SlurmUser)")
    b = bed(environment={"setup": [*testbed_environment, NO_TRAINING]})
    env = {**os.environ, "HPCNN_SSH_CONFIG": str(b.ssh_config)}
    train = subprocess.Popen([*HPCNN, "--config", str(b.config), "train-all-folds"], cwd=b.ws,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while train.poll() is None and time.time() < deadline and len(_queue_names(b)) < 3:
            time.sleep(0.05)
        subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True)
        out, err = train.communicate(timeout=300)
        assert train.returncode != 0, out + err
        assert re.search(r"slurm|torque", err, re.I) and "refused job" in err, err
        accepted = len(_submitted(b))
        assert 3 <= accepted < 10, (accepted, out, err)
    finally:
        if train.poll() is None:
            train.kill()
        subprocess.run(["bash", str(UP)], check=True, capture_output=True, timeout=300)
    assert controller_up()
    try:
        res = b.cli("train-all-folds")
        assert res.returncode == 0, res.stdout + res.stderr
        _assert_each_fold_submitted_once(b)
    finally:
        b.cli("cancel", "--yes")


def test_not_enough_room_on_the_cluster_is_refused_before_anything_moves(bed, testbed) -> None:
    """remote_dir on a 512 kB file system (the dataset is about 1.6 MB): push and
    train-all-folds say how much room there is and what to do, and copy no dataset file."""
    from conftest import need

    need(os.geteuid() == 0, "mounting a small file system needs root")
    small = Path(f"/mnt/hpcnn-tests-small-{os.getpid()}")
    small.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(small)],
                   check=True)
    try:
        subprocess.run(["chown", testbed["TESTBED_USER"], str(small)], check=True)
        b = bed(remote_dir=str(small / "hpcnn"))
        for command in ("push", "train-all-folds"):
            res = b.cli(command)
            assert res.returncode == 1, res.stdout + res.stderr
            assert re.search(rf"not enough room on .*: {small}/hpcnn has \d+ kB free and the "
                             r"push needs about 1\.\d+ MB more", res.stderr), res.stderr
            assert "hpcnn clean" in res.stderr and "cluster.remote_dir" in res.stderr
            assert not [p for p in small.rglob("*") if p.is_file()], "nothing copied"
        assert "f0:" not in b.cli("runs").stdout, "nothing submitted"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        small.rmdir()


def test_a_workspace_and_environment_lines_with_spaces_quotes_and_commands(
        testbed, ssh_config, tiny_dataset, testbed_environment, tmp_path: Path) -> None:
    """A laptop folder (and so the remote_dir made from it) with spaces, quotes and ``$(...)``:
    push moves the files as they are and the job runs; environment lines with quotes and
    ``$(...)`` run as the shell lines they are, and hpcnn's own values stay data (no canary)."""
    canary = f"hpcnn-canary-{os.getpid()}"
    words = "export HPCNN_WORDS=\"it's $(echo a b)\""
    check = "[ \"$HPCNN_WORDS\" = \"it's a b\" ]"
    b = make_bed(tmp_path / f"my data 'x' \"y\" $(touch {canary})", tiny_dataset, testbed,
                 ssh_config, [*testbed_environment, words, check, NO_TRAINING],
                 training={"folds": [0], "max_resubmits": 0})
    try:
        res = b.cli("train-all-folds")
        assert res.returncode == 0, res.stdout + res.stderr
        status = b.wait({11}, timeout=180)
        remote = remote_sha256(b, "nnUNet_preprocessed/Dataset501_Tiny")
        local_dir = b.ws / "nnUNet_preprocessed" / "Dataset501_Tiny"
        assert remote == {str(p.relative_to(local_dir)): sha256(p) for p in local_dir.rglob("*")
                          if p.is_file() and p.name != "cases.csv"}
        # The words line and its check passed inside the job: the line that stopped it is the
        # one that ends every job of these tests.
        tail = status["folds"][0]["error_tail"]
        assert f"environment setup failed (exit 1) at: {NO_TRAINING}" in tail, tail
        found = b.remote(f"cd && find . -name '{canary}*' 2>/dev/null; true")
        assert found == "" and not list(tmp_path.rglob(f"{canary}*"))
        assert not list(Path.home().glob(f"{canary}*")) and not list(Path("/").glob(canary))
    finally:
        b.cli("cancel", "--yes")
        b.remove_remote()


def test_nnunetv2_missing_on_the_cluster_is_refused_with_the_fix(bed) -> None:
    b = bed(environment={"setup": []})  # the account's own python3: no nnunetv2
    res = b.cli("train-all-folds")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "nnunetv2 is not importable where jobs run (testbed)" in res.stderr, res.stderr
    assert "environment.setup" in res.stderr and "hpcnn doctor" in res.stderr
    assert "f0:" not in b.cli("runs").stdout


@pytest.mark.parametrize("ssh,logins", [("openssh", 1), ("fabric", 3)])
def test_submitting_five_folds_logs_in_once(bed, testbed_environment, testbed, ssh: str,
                                            logins: int) -> None:
    """train-all-folds (push, checks, ten jobs): one login with openssh, whose rsync rides it;
    with fabric, one for the commands plus one per rsync (the job files and the dataset). Then
    status: one login either way; before anything was recorded, none."""
    b = bed(ssh=ssh, environment={"setup": [*testbed_environment, NO_TRAINING]})
    log = Path(testbed["TESTBED_SSHD_LOG"])

    def accepted() -> int:
        return log.read_text().count("Accepted publickey for")

    before = accepted()
    nothing = b.cli("status")  # nothing recorded yet: said without logging in
    assert nothing.returncode != 0 and "train-all-folds" in nothing.stderr, nothing.stderr
    try:
        res = b.cli("train-all-folds")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "10 job(s) submitted" in res.stdout, res.stdout
        time.sleep(1)  # sshd writes its log line as the login completes
        assert accepted() - before == logins
        # status begins its login before its imports (openssh): still one login
        before = accepted()
        status = b.cli("status")
        assert status.returncode in (10, 11), status.stdout + status.stderr
        assert "Dataset501_Tiny" in status.stdout, status.stdout
        time.sleep(1)
        assert accepted() - before == 1
    finally:
        b.cli("cancel", "--yes")


def test_status_watch_polls_in_one_kept_shell(bed, testbed) -> None:
    """status --watch: one login, and after its first poll every poll runs in one remote shell
    kept open (remote/kept_shell.py): three polls, two sessions in sshd's log (three without
    it). The jobs are held, so every poll finds them queued."""
    b = bed(ssh="openssh", resources={"extra_directives": ["-h"]})
    log = Path(testbed["TESTBED_SSHD_LOG"])

    def counts() -> tuple[int, int]:
        text = log.read_text()
        return text.count("Accepted publickey for"), text.count("Starting session:")

    try:
        res = b.cli("train-all-folds", "--folds", "0")
        assert res.returncode == 0, res.stdout + res.stderr
        before = counts()
        proc = subprocess.Popen(
            [*HPCNN, "--config", str(b.config), "status", "--watch", "--interval", "10",
             "--json"], cwd=b.ws, env={**os.environ, "HPCNN_SSH_CONFIG": str(b.ssh_config)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        polls = []
        for line in proc.stdout:
            if line.startswith("{"):
                polls.append(time.monotonic())
            if len(polls) == 3:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert len(polls) == 3, err
        assert "stopped watching" in err, (err, polls)
        time.sleep(1)  # sshd writes its log lines as they happen
        after = counts()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 2)
    finally:
        b.cli("cancel", "--yes")
