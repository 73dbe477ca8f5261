"""A small batch queue for this machine: the engine behind the ``local`` scheduler.

It behaves like a cluster scheduler so that every hpcnn service runs unchanged without one:
``submit`` returns at once with a job id and the job runs detached (it survives the CLI exiting),
at most ``max_parallel`` jobs run at a time (one GPU by default), ``afterok``/``afterany``
dependencies are honoured (a job whose ``afterok`` dependency failed is cancelled, as Torque
does), ``cancel`` kills the job's whole process group, and an optional walltime sends SIGTERM and
then SIGKILL like a real one. A job that is still queued or running has a runner process; when the
runner and the job are both gone without a final state the job simply leaves the queue, and
hpcnn's monitor decides from the job's own markers, exactly as on a cluster.

The queue lives in ``$HPCNN_LOCALQ_DIR`` or the user's state folder: one queue per user and
machine, like a scheduler, whichever workspace submits. Like a scheduler it reads directives from
the script: ``#LOCALQ max_parallel=K`` (start only while fewer than K jobs run) and
``#LOCALQ walltime=SECONDS``. Commands (what the local dialect runs)::

    python -m hpcnn.schedulers.localq submit [--workdir D] [--name N] [--after afterok:ID] SCRIPT
        → the id
    python -m hpcnn.schedulers.localq status ID...
        → one line per known id: id|state|exit|reason|name
    python -m hpcnn.schedulers.localq cancel ID...
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcnn.fsutil import atomic_write_text

POLL_S = 0.3
KILL_WAIT_S = 20.0
ACTIVE = ("queued", "held", "running")


def queue_dir() -> Path:
    env = os.environ.get("HPCNN_LOCALQ_DIR")
    if env:
        return Path(env)
    from platformdirs import user_state_dir

    return Path(user_state_dir("hpcnn")) / "localq"


class Queue:
    """Job records as JSON files, each changed under its own lock and replaced atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs = root / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with open(self.root / f"{name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def new_id(self) -> str:
        with self._lock("counter"):
            counter = self.root / "counter"
            value = int(counter.read_text()) + 1 if counter.exists() else 1
            atomic_write_text(counter, str(value))
        return str(value)

    def load(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.jobs / f"{job_id}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def update(self, job_id: str, **changes: Any) -> dict[str, Any]:
        """Read-modify-write under the job's lock; a final state is never overwritten."""
        with self._lock(f"job-{job_id}"):
            rec = self.load(job_id) or {"id": job_id}
            if rec.get("state") not in ACTIVE and "state" in rec and "state" in changes:
                changes.pop("state")
                changes.pop("exit_code", None)
            rec.update(changes)
            atomic_write_text(self.jobs / f"{job_id}.json", json.dumps(rec))
            return rec

    def active_ids(self) -> list[str]:
        ids = []
        for path in self.jobs.glob("*.json"):
            rec = self.load(path.stem)
            if rec and rec.get("state") in ACTIVE:
                ids.append(path.stem)
        return sorted(ids, key=int)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _group_alive(pgid: int | None) -> bool:
    """Whether any live (non-zombie) process of the job's process group remains."""
    if not pgid:
        return False
    proc = Path("/proc")
    if not proc.is_dir():  # macOS: no /proc; a zombie-only group is rare there
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


# ---- commands -------------------------------------------------------------------------------


def directives(script: Path) -> dict[str, int]:
    """``#LOCALQ key=value`` lines of the script's header (integers)."""
    found: dict[str, int] = {}
    for line in script.read_text(errors="replace").splitlines()[:200]:
        if line.startswith("#LOCALQ "):
            for item in line[len("#LOCALQ "):].split():
                key, _, value = item.partition("=")
                if value.isdigit():
                    found[key] = int(value)
    return found


def submit(q: Queue, script: str, name: str, workdir: str, after: list[str]) -> str:
    deps = []
    for spec in after:
        kind, _, ids = spec.partition(":")
        if kind not in ("afterok", "afterany", "afternotok") or not ids:
            raise SystemExit(f"localq: bad dependency {spec!r} (use afterok:ID[:ID...])")
        for dep in ids.split(":"):
            if q.load(dep) is None:
                raise SystemExit(f"localq: dependency on unknown job id {dep}")
            deps.append([kind, dep])
    if not Path(script).is_file():
        raise SystemExit(f"localq: no such job script: {script}")
    opts = directives(Path(script))
    job_id = q.new_id()
    q.update(job_id, name=name, script=str(Path(script).resolve()), workdir=workdir, deps=deps,
             max_parallel=max(1, opts.get("max_parallel", 1)), walltime=opts.get("walltime"),
             state="queued", exit_code=None,
             reason="", submitted=time.time())
    runner = subprocess.Popen(
        [sys.executable, "-m", "hpcnn.schedulers.localq", "_run", job_id],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
        env={**os.environ, "HPCNN_LOCALQ_DIR": str(q.root)},
    )
    q.update(job_id, runner_pid=runner.pid)
    return job_id


def status(q: Queue, ids: list[str]) -> list[str]:
    lines = []
    for job_id in ids:
        rec = q.load(job_id)
        if rec is None:
            continue
        state = rec.get("state")
        if state in ACTIVE and not _alive(rec.get("runner_pid")):
            # The runner vanished: report the job only while its processes still run.
            if not _group_alive(rec.get("pgid")):
                continue
            state = "running"
        code = rec.get("exit_code")
        lines.append("|".join([job_id, str(state), "" if code is None else str(code),
                               str(rec.get("reason") or ""), str(rec.get("name") or "")]))
    return lines


def cancel(q: Queue, ids: list[str]) -> None:
    for job_id in ids:
        rec = q.load(job_id)
        if rec is None or rec.get("state") not in ACTIVE:
            continue
        rec = q.update(job_id, state="cancelled", reason="cancelled by user", ended=time.time())
        pgid = rec.get("pgid")
        if pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)


# ---- the detached runner --------------------------------------------------------------------


def _deps_verdict(q: Queue, deps: list[list[str]]) -> str:
    """``wait``, ``go`` or a reason to cancel."""
    for kind, dep in deps:
        rec = q.load(dep) or {}
        state = rec.get("state")
        if state in ACTIVE or state is None:
            return "wait"
        ok = state == "completed"
        if kind == "afterok" and not ok or kind == "afternotok" and ok:
            return f"dependency {dep} ended {state}"
    return "go"


def _occupies_slot(rec: dict[str, Any]) -> bool:
    """A running job holds a slot while its runner or any of its processes lives."""
    return rec.get("state") == "running" and (
        _alive(rec.get("runner_pid")) or _group_alive(rec.get("pgid")))


def _claim_slot(q: Queue, job_id: str, max_parallel: int) -> bool:
    """Mark the job running if fewer than ``max_parallel`` jobs run and no older runnable job
    waits; decided under the queue's dispatch lock, so two runners never take one slot."""
    with q._lock("dispatch"):
        running = 0
        for other in q.active_ids():
            rec = q.load(other) or {}
            if _occupies_slot(rec):
                running += 1
            elif (int(other) < int(job_id) and rec.get("state") == "queued"
                  and _alive(rec.get("runner_pid"))):
                return False
        if running >= max_parallel:
            return False
        return q.update(job_id, state="running", started=time.time())["state"] == "running"


def run_job(q: Queue, job_id: str) -> None:
    rec = q.load(job_id)
    if rec is None:
        return
    claimed = False
    while not claimed:
        rec = q.load(job_id) or {}
        if rec.get("state") not in ("queued", "held"):
            return
        verdict = _deps_verdict(q, rec.get("deps", []))
        if verdict == "wait":
            if rec.get("state") != "held":
                q.update(job_id, state="held", reason="waiting for dependency")
        elif verdict != "go":
            q.update(job_id, state="cancelled", reason=verdict, ended=time.time())
            return
        else:
            if rec.get("state") != "queued":
                q.update(job_id, state="queued", reason="")
            claimed = _claim_slot(q, job_id, int(rec.get("max_parallel") or 1))
        if not claimed:
            time.sleep(POLL_S)

    workdir = rec.get("workdir") or "/"
    out = open(Path(workdir) / f"local-{job_id}.out", "ab")  # noqa: SIM115
    child = subprocess.Popen(
        ["bash", rec["script"]], cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "HPCNN_LOCAL_JOBID": job_id},
    )
    rec = q.update(job_id, state="running", pgid=child.pid, started=time.time())
    if rec.get("state") == "cancelled":  # cancelled while we were starting
        os.killpg(child.pid, signal.SIGTERM)
    walltime = rec.get("walltime")
    deadline = rec["started"] + walltime if walltime else None
    term_sent: float | None = None
    timed_out = False
    while child.poll() is None:
        now = time.time()
        current = q.load(job_id) or {}
        if term_sent is None and (current.get("state") == "cancelled"
                                  or deadline is not None and now >= deadline):
            timed_out = current.get("state") != "cancelled"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            term_sent = now
        elif term_sent is not None and now - term_sent > KILL_WAIT_S:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        time.sleep(POLL_S)
    code = child.returncode if child.returncode >= 0 else 128 - child.returncode
    if timed_out:
        state, reason = "timeout", "walltime exceeded"
    else:
        state, reason = ("completed", "") if code == 0 else ("failed", "")
    q.update(job_id, state=state, exit_code=code, reason=reason, ended=time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcnn.schedulers.localq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("submit")
    p.add_argument("script")
    p.add_argument("--name", help="job name (default: the script's folder name, its job dir)")
    p.add_argument("--workdir", help="where the job starts (default: the current folder)")
    p.add_argument("--after", action="append", default=[])
    sub.add_parser("status").add_argument("ids", nargs="*")
    sub.add_parser("cancel").add_argument("ids", nargs="+")
    sub.add_parser("_run").add_argument("job_id")
    args = parser.parse_args(argv)
    q = Queue(queue_dir())
    if args.cmd == "submit":
        name = args.name or Path(args.script).resolve().parent.name
        print(submit(q, args.script, name, str(Path(args.workdir or ".").resolve()), args.after))
    elif args.cmd == "status":
        print("\n".join(status(q, args.ids or q.active_ids())))
    elif args.cmd == "cancel":
        cancel(q, args.ids)
    else:
        run_job(q, args.job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
