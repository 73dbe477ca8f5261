"""``hpcnn status`` as a user runs it vs ``ssh host qstat ID...``, for a run of 5 jobs and one
of 100, over loopback and over a link with a laptop's latency; and the polls of
``status --watch`` after the first vs a fresh ``ssh host qstat``.

Run as root with the test bed up (tests/testbed/up.sh):
    python bench/status_cli.py [--repeats 7] [--delay-ms 25]

Goals (through the relay, bench/tcp_proxy.py: 25 ms each way): a fresh ``hpcnn status --run R
--json`` in the workspace costs <= 1.3x the baseline with the openssh transport and <= 1.6x with
fabric, with ONE connection (one login) and ONE remote command whatever the number of jobs; a
``--watch`` poll after the first rides the open connection, in the remote shell it keeps open
(remote/kept_shell.py: one round trip per poll, not two), and costs <= 0.3x a fresh ``ssh host
qstat``. The loopback ratios are printed beside: there a round trip costs nothing, so they show
what the CLI costs on this machine (Python start, imports, config, registry).

The runs are recorded as train-all-folds records them; their jobs are tiny ``sleep`` jobs
submitted through the job engine, held (``#PBS -h``) so that they never take the test bed's
CPUs from anyone: queued jobs are what status polls most. The 5-job run is 5 folds of one
attempt; the 100-job run 5 folds of 20 attempts (a chain submitted up front, as train-all-folds
does for short walltimes), every job polled. The baseline asks the same ids of the same host
with the same key through the same link. Connections, logins and remote commands are counted
from the relay's log and the test bed's sshd log.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bed import HPCNN, LOOPBACK, BenchBed, Wire  # noqa: E402
from harness import compare, goal, load_average, report, time_call, time_command  # noqa: E402

GOALS = {"openssh": 1.3, "fabric": 1.6}
WATCH_GOAL = 0.3
WATCH_POLLS = 5
RUNNING = (0, 10)
"""``hpcnn status`` exits 10 while jobs are queued or running."""


def verdict(wire: Wire, commands: int) -> str:
    """One connection, one login, and the remote commands the polls need, no more."""
    ok = (wire.connections, wire.logins, wire.sessions) == (1, 1, commands)
    return "PASS" if ok else "MISS"


def check_polled(bed: BenchBed, run_id: str, ids: list[str]) -> None:
    """One status in the workspace must poll every job of the run: each row is stored anew
    with the scheduler's word (``queued``: Slurm's qstat shows a held job as queued), and each
    fold shows its first job."""
    asked = time.time()
    out = json.loads(bed.run([HPCNN, "status", "--run", run_id, "--json"], LOOPBACK, RUNNING))
    with bed.session(LOOPBACK) as session:
        rows = session.registry.jobs(run_id)
    assert sorted(r.scheduler_id or "" for r in rows) == sorted(ids), rows
    stale = [r for r in rows if r.state != "queued" or (r.updated_at or 0) < asked]
    assert not stale, stale
    firsts = {r.fold: r.scheduler_id for r in rows if r.attempt == 1}
    assert {f["fold"]: f["job_id"] for f in out["folds"]} == firsts, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--delay-ms", type=float, default=25.0)
    args = parser.parse_args()
    with BenchBed("status", delay_ms=args.delay_ms,
                  resources={"extra_directives": ["-h"]}) as bed:
        runs: dict[int, tuple[str, list[str]]] = {}
        with bed.session(LOOPBACK) as session:
            for n, (dataset, folds, attempts) in {
                    5: ("Dataset901_StatusFive", 5, 1),
                    100: ("Dataset902_StatusHundred", 5, 20)}.items():
                before = len(bed.job_ids)
                run = bed.record_run(session, dataset, folds, attempts, submit=True)
                runs[n] = run.id, bed.job_ids[before:]
        for run_id, ids in runs.values():
            check_polled(bed, run_id, ids)
        print(f"hpcnn status vs ssh host qstat ID...: {args.repeats} interleaved runs each, "
              f"medians; {load_average()}")
        for ssh, limit in GOALS.items():
            bed.use(ssh)
            for n, (run_id, ids) in runs.items():
                status = [HPCNN, "status", "--run", run_id, "--json"]
                for link in (LOOPBACK, bed.relayed):
                    qstat = [*bed.ssh(link), "qstat", *ids]
                    b, c, ratio = compare(
                        partial(time_command, qstat),
                        partial(time_command, status, RUNNING, cwd=bed.ws, env=bed.env(link)),
                        repeats=args.repeats)
                    report(f"[{ssh}] {n} jobs, {link}: hpcnn status", "ssh host qstat", b, c,
                           ratio, goal=goal(ratio, limit) if link != LOOPBACK else None)
                qstat = [*bed.ssh(bed.relayed), "qstat", *ids]
                wire = bed.wire(status, RUNNING)
                print(f"    per command: hpcnn status {wire} "
                      f"(goal 1 login, 1 remote command: {verdict(wire, 1)}); "
                      f"ssh host qstat {bed.wire(qstat)}")
            watch(bed, ssh, runs, args.repeats)
        explain(bed, runs[5][1], args.repeats)
        print(load_average())


def explain(bed: BenchBed, ids: list[str], repeats: int) -> None:
    """Where a fresh status's time goes beyond ssh's: Python's start and hpcnn's imports are in
    every fresh figure, though the login now begins before them (remote/early_login.py); a
    fresh command on an open connection costs two round trips of the link (a channel opens,
    then runs its command), one in the shell ``--watch`` keeps open, and the scheduler's own
    time on the cluster."""
    python = [sys.executable, "-c", "pass"]
    for ssh in GOALS:
        imports = [sys.executable, "-c", "import hpcnn.cli.main, hpcnn.services.status, "
                   f"hpcnn.config, hpcnn.remote.{'openssh' if ssh == 'openssh' else 'fabric_ssh'}"]
        b, c, _ = compare(partial(time_command, python), partial(time_command, imports),
                          repeats=repeats)
        print(f"python start {b * 1000:.0f} ms + the imports of status with {ssh} "
              f"{(c - b) * 1000:.0f} ms: in every fresh hpcnn status above")
    clock = [*bed.ssh(LOOPBACK), "s=$(date +%s%N); qstat " + " ".join(ids) +
             " >/dev/null; echo $(( ($(date +%s%N) - s) / 1000000 ))"]
    on_cluster = statistics.median(
        int(subprocess.run(clock, capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats))
    print(f"qstat of {len(ids)} ids on the cluster itself: {on_cluster:.0f} ms; a command on an "
          f"open connection waits 2 round trips of the link besides ({bed.relayed}: "
          f"{4 * bed.delay_ms:.0f} ms), one in a kept shell ({2 * bed.delay_ms:.0f} ms)")


def watch(bed: BenchBed, ssh: str, runs: dict[int, tuple[str, list[str]]],
          repeats: int) -> None:
    """``status --watch`` calls ``run_status`` on its session every interval: the polls after
    the first, timed in one session (the interval left out), vs a fresh ``ssh host qstat``."""
    from hpcnn.services.status import run_status

    for link in (LOOPBACK, bed.relayed):
        for n, (run_id, ids) in runs.items():
            qstat = [*bed.ssh(link), "qstat", *ids]
            with bed.session(link) as session:
                run_status(session, run_id)  # the first poll opens the connection
                session.conn.keep_shell()  # as status --watch does after its first poll
                b, c, ratio = compare(partial(time_command, qstat),
                                      partial(time_call, partial(run_status, session, run_id)),
                                      repeats=repeats)
            report(f"[{ssh}] {n} jobs, {link}: status --watch poll after the first",
                   "a fresh ssh host qstat", b, c, ratio, goal=goal(ratio, WATCH_GOAL)
                   if link != LOOPBACK else None)
            if link != LOOPBACK:
                relay_mark, log_mark = bed.relay.mark(), bed.sshd_log.stat().st_size
                with bed.session(link) as session:
                    for poll in range(WATCH_POLLS):
                        run_status(session, run_id)
                        if poll == 0:
                            session.conn.keep_shell()
                wire = bed.wire_since(relay_mark, log_mark)
                print(f"    {WATCH_POLLS} polls in one session: {wire} (goal 1 login, 2 remote "
                      f"commands: the first poll's, then the kept shell's that runs the others: "
                      f"{verdict(wire, 2)})")


if __name__ == "__main__":
    main()
