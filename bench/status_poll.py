"""A status poll of 5 jobs through the test bed vs ``ssh host qstat ID...`` (goal: <= 1.3x with
openssh, <= 2x with fabric), and SSH logins per poll counted in the test bed's sshd log.

Run as root with the test bed up (tests/testbed/up.sh): python bench/status_poll.py [--repeats N]

The candidate is what ``hpcnn status`` does, as a fresh process each time (a CLI invocation):
load cluster.yaml, open the connection, ONE remote command with the torque dialect's
``qstat -f`` for the 5 jobs plus every job's markers (hpcnn.jobs.poll), close. The baseline
is a fresh ``ssh`` process running ``qstat ID...`` on the same host with the same key.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import compare, report, time_call, time_command  # noqa: E402

from hpcnn.config import Config, load_config_file  # noqa: E402
from hpcnn.jobs import engine as jobs  # noqa: E402
from hpcnn.remote import connect  # noqa: E402
from hpcnn.schedulers import get_dialect  # noqa: E402

ENV = Path("/etc/hpcnn-testbed/testbed.env")
N_JOBS = 5
GOALS = {"openssh": "<= 1.3x", "fabric": "<= 2x"}

POLL_ONCE = """
import sys
from hpcnn.jobs import engine as jobs
from hpcnn.config import load_config_file
from hpcnn.remote import connect
from hpcnn.schedulers import get_dialect
from pathlib import Path

cfg = load_config_file(Path(sys.argv[1]))
pairs = [tuple(arg.split("=", 1)) for arg in sys.argv[2:]]
with connect(cfg) as conn:
    observed, answered = jobs.poll(conn, get_dialect(cfg.cluster.scheduler), pairs)
assert answered and len(observed) == len(pairs), observed
"""


def accepted(log: Path) -> int:
    return sum("Accepted publickey for" in line for line in log.read_text().splitlines())


def logins_per_run(log: Path, argv: list[str], runs: int = 5) -> float:
    before = accepted(log)
    for _ in range(runs):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (accepted(log) - before) / runs


def _poll(cfg: Config, submitted: list[tuple[str, str]]) -> None:
    with connect(cfg) as conn:
        jobs.poll(conn, get_dialect(cfg.cluster.scheduler), submitted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    facts = dict(line.split("=", 1) for line in ENV.read_text().splitlines() if "=" in line)
    log = Path(facts["TESTBED_SSHD_LOG"])
    work = Path(tempfile.mkdtemp(prefix="hpcnn-bench-"))
    ssh_config = work / "ssh_config"
    ssh_config.write_text(
        f"Host testbed\n  HostName {facts['TESTBED_HOST']}\n  Port {facts['TESTBED_PORT']}\n"
        f"  User {facts['TESTBED_USER']}\n  IdentityFile {facts['TESTBED_KEY']}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {facts['TESTBED_KNOWN_HOSTS']}\n")
    os.environ["HPCNN_SSH_CONFIG"] = str(ssh_config)  # both the candidate and ssh -F use it
    configs = {}
    for ssh in ("openssh", "fabric"):
        configs[ssh] = work / f"{ssh}.yaml"
        configs[ssh].write_text(
            f"cluster: {{scheduler: torque, host: testbed, ssh: {ssh}, "
            "remote_dir: hpcnn-bench}\nresources: {cpus: 1, gpus: 0, mem: 100mb}\n")

    from hpcnn.jobs.model import JobSpec
    from hpcnn.jobs.script import render_job
    from hpcnn.workspace import RemoteLayout

    cfg = load_config_file(configs["openssh"])
    dialect = get_dialect("torque")
    layout = RemoteLayout(cfg.remote_dir)
    with connect(cfg) as conn:
        submitted = []
        for n in range(N_JOBS):
            job_dir = layout.job_dir("bench", f"job{n}")
            request = JobSpec(run="bench", name=f"job{n}", job_dir=job_dir,
                                 commands=[["sleep", "900"]])
            submitted.append((jobs.submit(conn, dialect, render_job(cfg, dialect, request),
                                          job_dir), job_dir))
    ids = [job_id for job_id, _ in submitted]
    try:
        baseline = ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "testbed",
                    "qstat", *ids]
        print(f"status of {N_JOBS} jobs ({', '.join(ids)}) on the test bed, "
              f"{args.repeats} interleaved runs, medians")
        for ssh, path in configs.items():
            candidate = [sys.executable, "-c", POLL_ONCE, str(path),
                         *(f"{job_id}={job_dir}" for job_id, job_dir in submitted)]
            b, c, ratio = compare(lambda: time_command(baseline),
                                  lambda argv=candidate: time_command(argv),
                                  repeats=args.repeats)
            report(f"hpcnn poll ({ssh})", "ssh host qstat", b, c, ratio, goal=GOALS[ssh])
            print(f"  sshd logins per poll: hpcnn {logins_per_run(log, candidate):.2f}, "
                  f"baseline {logins_per_run(log, baseline):.2f}")
            poll_cfg = load_config_file(path)

            def in_process(cfg: Config = poll_cfg) -> float:
                return time_call(lambda: _poll(cfg, submitted))

            b, c, ratio = compare(lambda: time_command(baseline), in_process,
                                  repeats=args.repeats)
            report(f"  of which connect + poll + close ({ssh}, imports excluded)",
                   "ssh host qstat", b, c, ratio)
        imports = [sys.executable, "-c", "import hpcnn.jobs, hpcnn.config, hpcnn.remote"]
        b, c, _ = compare(lambda: time_command([sys.executable, "-c", "pass"]),
                          lambda: time_command(imports), repeats=args.repeats)
        print(f"python start {b * 1000:.0f} ms + hpcnn imports (config/pydantic, jobs) "
              f"{(c - b) * 1000:.0f} ms are in every fresh-process figure above")
    finally:
        with connect(cfg) as conn:
            jobs.cancel(conn, dialect, ids)
            conn.run(["rm", "-rf", cfg.remote_dir])


if __name__ == "__main__":
    main()
