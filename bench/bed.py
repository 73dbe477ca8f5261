"""A workspace for benchmarks on the test bed (tests/testbed/up.sh): its cluster.yaml, the two
links to the cluster (loopback, and a relay with a laptop's latency, bench/tcp_proxy.py), runs
recorded in its registry as train-all-folds records them, and what one command cost on the wire
(connections, logins, remote commands, bytes).

The benchmarks time the real CLI (``hpcnn ...`` in the workspace, a fresh process each time), so
the runs they query must be real: rows in the workspace's registry whose job ids the test bed's
scheduler knows (or, for finished jobs, whose job folders hold the exit markers a job writes).
Everything made on the test bed is under one remote_dir, removed by ``close()``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from tcp_proxy import Relay

if TYPE_CHECKING:
    from hpcnn.jobs.model import Run
    from hpcnn.services.session import Session

TESTBED_ENV = Path("/etc/hpcnn-testbed/testbed.env")
HPCNN = str(Path(sys.executable).with_name("hpcnn"))
"""The installed console script: what a user types."""
LOOPBACK = "loopback"


def testbed_facts() -> dict[str, str]:
    """The test bed's facts (tests/testbed/up.sh writes them): host, port, user, key, logs."""
    return dict(line.split("=", 1) for line in TESTBED_ENV.read_text().splitlines()
                if "=" in line)


def testbed_ssh_config(facts: dict[str, str], path: Path, port: int | None = None) -> Path:
    """An ssh config at ``path`` with the Host alias ``testbed``: the test bed itself, or a
    relay on ``port`` in front of it (the host key recorded under the relay's port, as a user's
    known_hosts holds the cluster's)."""
    port = port or int(facts["TESTBED_PORT"])
    known = Path(f"{path}.known_hosts")
    key = Path(facts["TESTBED_KNOWN_HOSTS"]).read_text().split(None, 1)[1]
    known.write_text(f"[{facts['TESTBED_HOST']}]:{port} {key}")
    path.write_text(
        f"Host testbed\n  HostName {facts['TESTBED_HOST']}\n  Port {port}\n"
        f"  User {facts['TESTBED_USER']}\n  IdentityFile {facts['TESTBED_KEY']}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n")
    return path


def sshd_sessions(log: Path, offset: int, ports: Collection[int]) -> tuple[int, int]:
    """(logins, sessions) in the test bed's sshd log after byte ``offset``, of the connections
    from ``ports`` (other users of the test bed log there too). A session is one remote command
    or one SFTP subsystem: a round trip of a command to the cluster."""
    logins = sessions = 0
    with log.open(encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        for line in handle:
            client = re.search(r" port (\d+)", line)  # the first port named is the client's
            if client is None or int(client.group(1)) not in ports:
                continue
            logins += line.startswith("Accepted publickey for")
            sessions += line.startswith("Starting session:")
    return logins, sessions


@dataclass(frozen=True)
class Wire:
    """What one command cost between this machine and the cluster."""

    connections: int
    logins: int
    sessions: int
    up: int
    down: int

    def __str__(self) -> str:
        return (f"{self.connections} connection(s), {self.logins} login(s), "
                f"{self.sessions} remote command(s), {self.up + self.down} bytes")


class BenchBed:
    """A workspace whose cluster is the test bed; ``links`` maps a link's name to the ssh
    config that reaches the cluster through it."""

    def __init__(self, name: str, *, delay_ms: float, ssh: str = "openssh",
                 resources: dict[str, object] | None = None) -> None:
        self.facts = testbed_facts()
        self.sshd_log = Path(self.facts["TESTBED_SSHD_LOG"])
        self.work = Path(tempfile.mkdtemp(prefix=f"hpcnn-bench-{name}-"))
        self.relay = Relay(self.facts["TESTBED_HOST"], int(self.facts["TESTBED_PORT"]),
                           delay_ms, self.work / "relay.log")
        self.delay_ms = delay_ms
        self.relayed = f"{delay_ms:g} ms link"
        self.links = {LOOPBACK: testbed_ssh_config(self.facts, self.work / "ssh_loopback"),
                      self.relayed: testbed_ssh_config(self.facts, self.work / "ssh_relayed",
                                                       self.relay.port)}
        self.ws = self.work / "ws"
        self.ws.mkdir()
        self.remote_dir = f"hpcnn-bench-{name}-{os.getpid()}"
        self.resources = {"cpus": 1, "gpus": 0, "mem": "100mb", "walltime": "1:00:00",
                          **(resources or {})}
        self.job_ids: list[str] = []
        self.use(ssh)

    def __enter__(self) -> BenchBed:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def use(self, ssh: str) -> None:
        """Write the workspace's cluster.yaml for the transport ``ssh`` (openssh, fabric)."""
        import yaml

        (self.ws / "cluster.yaml").write_text(yaml.safe_dump({
            "workspace": str(self.ws),
            "cluster": {"scheduler": "torque", "ssh": ssh, "host": "testbed",
                        "remote_dir": self.remote_dir},
            "resources": self.resources,
        }))

    def env(self, link: str) -> dict[str, str]:
        return {**os.environ, "HPCNN_SSH_CONFIG": str(self.links[link])}

    def ssh(self, link: str) -> list[str]:
        """A fresh ``ssh`` to the cluster through ``link``, as a user types it."""
        return ["ssh", "-F", str(self.links[link]), "-o", "BatchMode=yes", "testbed"]

    def session(self, link: str) -> Session:
        """A session of this workspace (as a command opens one) through ``link``."""
        from hpcnn.config import load_config_file
        from hpcnn.services.session import Session

        os.environ["HPCNN_SSH_CONFIG"] = str(self.links[link])
        return Session(load_config_file(self.ws / "cluster.yaml"))

    def run(self, argv: Sequence[str], link: str, ok: Collection[int] = (0,)) -> str:
        """Run ``argv`` in the workspace through ``link``; its stdout."""
        res = subprocess.run(argv, cwd=self.ws, env=self.env(link), capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, check=False)
        if res.returncode not in ok:
            raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr[-800:]}")
        return res.stdout

    def wire(self, argv: Sequence[str], ok: Collection[int] = (0,)) -> Wire:
        """Run ``argv`` through the relay; what it cost on the wire."""
        relay_mark, log_mark = self.relay.mark(), self.sshd_log.stat().st_size
        self.run(argv, self.relayed, ok)
        return self.wire_since(relay_mark, log_mark)

    def wire_since(self, relay_mark: int, log_mark: int) -> Wire:
        connections = self.relay.since(relay_mark)
        logins, sessions = sshd_sessions(self.sshd_log, log_mark, {c.port for c in connections})
        return Wire(len(connections), logins, sessions, sum(c.up for c in connections),
                    sum(c.down for c in connections))

    def record_run(self, session: Session, dataset: str, folds: int, attempts: int = 1,
                   *, submit: bool) -> Run:
        """A run recorded as train-all-folds records it: ``folds`` folds of ``attempts``
        attempts each, one registry row per attempt. ``submit``: each attempt is submitted
        through the job engine as a ``sleep`` job (held, if resources ask for it with
        extra_directives); else the rows get ids no scheduler holds any more, as finished jobs'
        do once the scheduler forgot them, and their folders' markers tell how they ended."""
        from hpcnn.jobs import engine
        from hpcnn.jobs.experiment import Experiment
        from hpcnn.jobs.folds import CONTINUES
        from hpcnn.jobs.model import FOLD, JobSpec, Run, job_name
        from hpcnn.jobs.script import render_job
        from hpcnn.jobs.submit import record_experiment
        from hpcnn.services.train import anchor_remote_dir
        from hpcnn.state import JobRow

        anchor_remote_dir(session)
        run = Run(dataset=dataset, trainer="nnUNetTrainer", plans="nnUNetPlans",
                  configuration="3d_fullres")
        record_experiment(session.registry, Experiment(run.dataset, run.trainer, run.plans,
                                                       (run.configuration,),
                                                       tuple(range(folds))), session.host)
        gone = 10**7 + os.getpid() * 1000
        for fold in range(folds):
            before: tuple[str, str, str] | None = None  # the attempt this one continues
            for attempt in range(1, attempts + 1):
                name = job_name(run.id, fold, attempt)
                job_dir = session.remote.job_dir(run.id, name)
                session.registry.add(JobRow(name=name, run=run.id, kind=FOLD, fold=fold,
                                            attempt=attempt, job_dir=job_dir,
                                            scheduler=session.dialect.name, state="pending"),
                                     [before] if before else ())
                if submit:
                    spec = JobSpec(run=run.id, name=name, job_dir=job_dir,
                                   commands=[["sleep", "600"]], kind=FOLD, fold=fold,
                                   attempt=attempt, path_env=session.remote.nnunet_env())
                    job_id = engine.submit(session.conn, session.dialect,
                                           render_job(session.cfg, session.dialect, spec),
                                           job_dir)
                    self.job_ids.append(job_id)
                else:
                    job_id = str(gone + len(session.registry.jobs()))
                session.registry.update(name, scheduler_id=job_id, state="queued",
                                        submitted_at=time.time())
                before = (job_id, CONTINUES, name)
        return run

    def close(self) -> None:
        """Cancel the jobs submitted here, remove the remote_dir, stop the relay."""
        try:
            with self.session(LOOPBACK) as session:
                from hpcnn.jobs import engine

                engine.cancel(session.conn, session.dialect, self.job_ids)
                session.conn.run(["rm", "-rf", self.remote_dir])
        finally:
            self.relay.__exit__(None, None, None)
            shutil.rmtree(self.work, ignore_errors=True)
