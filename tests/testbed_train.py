"""Workspaces on the real test bed (sshd + Slurm with its Torque wrappers) for the
train-all-folds tests: the tiny preprocessed dataset, a cluster.yaml, and the CLI run in a
fresh process as a user runs it. Module-scoped, so one training is shared by many tests."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import testbed_ssh
from models import tiny_dataset  # noqa: F401  (the session's one preprocessed dataset)
from runs_helper import record_run

HPCNN = [sys.executable, "-m", "hpcnn.cli.entry"]
TINY = "hpcnnTinyTrainer"
MODEL = f"Dataset501_Tiny/{TINY}__nnUNetPlans__3d_fullres"


def ssh_config_text(testbed: dict[str, str]) -> str:
    """The Host alias ``testbed`` and the test bed's known_hosts (as conftest's fixture)."""
    return ("Host testbed\n"
            f"  HostName {testbed['TESTBED_HOST']}\n  Port {testbed['TESTBED_PORT']}\n"
            f"  User {testbed['TESTBED_USER']}\n  IdentityFile {testbed['TESTBED_KEY']}\n"
            "  IdentitiesOnly yes\n"
            "Host *\n"
            f"  UserKnownHostsFile {testbed['TESTBED_KNOWN_HOSTS']}\n"
            "  GlobalKnownHostsFile /dev/null\n")


@dataclass
class Bed:
    """One workspace whose jobs run on the test bed."""

    ws: Path
    remote_dir: str
    testbed: dict[str, str]
    ssh_config: Path

    @property
    def config(self) -> Path:
        return self.ws / "cluster.yaml"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HPCNN_SSH_CONFIG": str(self.ssh_config)}
        return subprocess.run([*HPCNN, "--config", str(self.config), *args], cwd=self.ws,
                              env=env, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def cron(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """hpcnn run the way cron runs it: ``env -i`` (HOME, a bare PATH and the ssh config
        variable that ``sync --install-cron`` writes into the line), working directory ``/``,
        no terminal, ``--config`` absolute."""
        hpcnn = Path(sys.executable).with_name("hpcnn")
        return subprocess.run(["env", "-i", f"HOME={self.ssh_config.parent.parent}",
                               "PATH=/usr/bin:/bin", f"HPCNN_SSH_CONFIG={self.ssh_config}",
                               str(hpcnn), "--config", str(self.config), *args], cwd="/",
                              capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL, start_new_session=True)

    def remote(self, command: str) -> str:
        """``command`` run in the remote_dir over a plain ssh; its stdout."""
        line = f"cd {shlex.quote(self.remote_dir)} && {command}"
        res = subprocess.run([*testbed_ssh(self.testbed), line], capture_output=True, text=True,
                             check=False, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def status(self) -> tuple[int, dict]:
        res = self.cli("status", "--json")
        assert res.stdout.startswith("{"), res.stdout + res.stderr
        return res.returncode, json.loads(res.stdout)

    def wait(self, done: set[int], timeout: float) -> dict:
        """Poll ``status --json`` until its exit code is in ``done``."""
        deadline = time.time() + timeout
        while True:
            code, status = self.status()
            if code in done:
                return status
            assert time.time() < deadline, f"not finished after {timeout} s: {status}"
            time.sleep(5)

    def remove_remote(self) -> None:
        subprocess.run([*testbed_ssh(self.testbed), f"rm -rf {shlex.quote(self.remote_dir)}"],
                       capture_output=True, check=False, timeout=60)


def make_bed(root: Path, dataset: Path | None, testbed: dict[str, str], ssh_config: Path,
             setup: list[str], *, scheduler: str = "torque", ssh: str = "fabric",
             remote_dir: str | None = None, **sections: dict[str, object]) -> Bed:
    """A workspace under ``root`` with a copy of the tiny dataset (``dataset``: a workspace of
    models.prepare_tiny_dataset; None: none) and a cluster.yaml for the test bed."""
    ws = root / "ws"
    ws.mkdir(parents=True)
    if dataset is not None:
        for tree in ("nnUNet_raw", "nnUNet_preprocessed"):
            shutil.copytree(dataset / tree, ws / tree)
    # Unique per test and session: the scheduler remembers finished jobs for MinJobAge, so
    # tests that count jobs tell theirs apart by their remote folder.
    remote_dir = remote_dir or f"hpcnn-tests/{os.getpid()}-{root.parent.name}-{root.name}"
    data: dict[str, object] = {
        "workspace": str(ws),
        "cluster": {"scheduler": scheduler, "ssh": ssh, "host": "testbed",
                    "remote_dir": remote_dir},
        # Memory is not enforced on the test bed (task/none); ask little so jobs always fit.
        "resources": {"cpus": 1, "gpus": 0, "mem": "200mb", "walltime": "1:00:00"},
        "environment": {"setup": setup},
        "training": {"dataset": "Tiny", "trainer": TINY, "device": "cpu", "max_resubmits": 1,
                     "walltime_margin": "5m"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}  # type: ignore[dict-item]
    (ws / "cluster.yaml").write_text(yaml.safe_dump(data))
    return Bed(ws, remote_dir, testbed, ssh_config)


def submit_fold_jobs(bed: Bed, commands: dict[int, list[list[str]] | None],
                     after: dict[int, int] | None = None) -> tuple[str, dict[int, str]]:
    """A run built as train-all-folds builds it (registry rows, then the job engine) whose fold
    jobs run ``commands`` instead of training: one job per fold, ``after[f]`` = the fold whose
    job must end well first (afterok); None submits nothing and records an id the scheduler never
    knew (a job gone without a marker). Returns the run id and the job ids by fold. The caller
    sets HPCNN_SSH_CONFIG to ``bed.ssh_config`` (monkeypatch), as ``Bed.cli`` does."""
    import random

    from hpcnn.config import load_config_file
    from hpcnn.jobs import engine
    from hpcnn.jobs.model import FOLD, JobSpec, job_name
    from hpcnn.jobs.script import render_job
    from hpcnn.schedulers.base import Dependency
    from hpcnn.services.session import Session
    from hpcnn.services.train import anchor_remote_dir
    from hpcnn.state import JobRow

    cfg = load_config_file(bed.config)
    ids: dict[int, str] = {}
    with Session(cfg) as session:
        anchor_remote_dir(session)
        run, layout, dialect = session.new_run(), session.remote, session.dialect
        record_run(session, run, folds=sorted(commands))
        for fold, argv in sorted(commands.items()):
            name = job_name(run.id, fold)
            spec = JobSpec(run=run.id, name=name, job_dir=layout.job_dir(run.id, name),
                           commands=argv or [], kind=FOLD, fold=fold,
                           path_env=layout.nnunet_env())
            session.registry.add(JobRow(name=name, run=run.id, kind=FOLD, fold=fold,
                                        job_dir=spec.job_dir, scheduler=dialect.name,
                                        state="pending"))
            if argv is None:
                ids[fold] = str(random.randint(10**6, 10**7))
            else:
                first = (after or {}).get(fold)
                deps = [Dependency(ids[first], "afterok")] if first is not None else []
                ids[fold] = engine.submit(session.conn, dialect,
                                          render_job(cfg, dialect, spec), spec.job_dir, deps)
            session.registry.update(name, scheduler_id=ids[fold], state="queued",
                                    submitted_at=time.time())
    return run.id, ids


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remote_sha256(bed: Bed, folder: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (relative to remote_dir)."""
    out = bed.remote(f"cd {shlex.quote(folder)} && find . -type f -print0 | xargs -0 sha256sum")
    return {name.removeprefix("./"): digest
            for digest, name in (line.split("  ", 1) for line in out.splitlines())}


_made: dict[str, Path] = {}  # pytest keeps a fixture per importing module: make each once


@pytest.fixture(scope="session")
def ssh_config(testbed: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ssh config as ``~/.ssh/config`` of a home of its own (cron's HOME, too)."""
    if "ssh_config" not in _made:
        home = tmp_path_factory.mktemp("home")
        (home / ".ssh").mkdir(mode=0o700)
        path = home / ".ssh" / "config"
        path.write_text(ssh_config_text(testbed))
        _made["ssh_config"] = path
    return _made["ssh_config"]
