"""Doctor's checks of a cluster: SSH, login shell, remote dir, scheduler, remote nnU-Net.

Each check is one remote command over the session's one connection and names the link that is
broken with its fix. Facts found on the way (the detected dialect, the absolute remote dir)
go into ``ctx.facts`` for the checks after them and into the registry for later commands.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from hpcnn.errors import ConnectionFailed, HpcnnError, SchedulerUnavailable
from hpcnn.jobs import vmem
from hpcnn.jobs.script import render_setup
from hpcnn.nnunet.choice import version_problem
from hpcnn.remote.base import join_argv
from hpcnn.remote.ssh_common import SshConnection
from hpcnn.schedulers import get_dialect
from hpcnn.schedulers.detect import detect_line, parse_detection
from hpcnn.services.doctor.base import (
    MIN_FREE_GB,
    Check,
    CheckResult,
    DoctorContext,
    Outcome,
    failed,
    unreachable,
)

_PYTHON_PROBE = (
    "import sys, importlib.metadata as m\n"
    "def v(p):\n"
    "    try:\n"
    "        return m.version(p)\n"
    "    except Exception:\n"
    "        return '-'\n"
    "print(sys.version.split()[0], v('nnunetv2'), v('torch'))\n"
)
"""Python, nnunetv2 and torch versions (torch's from its metadata: importing it takes seconds)."""


_NO_SUCH_JOB = "67108863"  # Slurm's largest job id; "0" is rejected as malformed, not unknown


def check_ssh(ctx: DoctorContext) -> CheckResult:
    """Reachable, host key known, logged in: one command proves all three; a failure says
    which of them broke (ssh_common words each cause)."""
    cluster, conn = ctx.cfg.cluster, ctx.session.conn
    try:
        conn.run_shell("true")
    except ConnectionFailed as exc:
        text = str(exc)
        name = ("ssh host key" if "host key" in text else
                "ssh login" if "refused the login" in text else "ssh reachable")
        return failed(name, exc)
    return CheckResult("ssh", Outcome.OK, f"{conn.description} via {cluster.ssh}: "
                                          "reachable, host key known, logged in")


def check_login_shell(ctx: DoctorContext) -> CheckResult:
    shell = ctx.cfg.cluster.login_shell
    res = ctx.session.conn.run_shell('echo "hpcnn-ok $0"; echo "$PATH"', check=False)
    lines = res.stdout.splitlines()
    if not res.ok or not lines or not lines[0].startswith("hpcnn-ok"):
        return CheckResult("login shell", Outcome.FAIL,
                           f"`{shell}` did not run a command (exit {res.returncode}): "
                           f"{res.stderr.strip()[-300:]}",
                           "set cluster.login_shell to a shell that takes a command, e.g. "
                           "`bash -lc`")
    path = lines[1] if len(lines) > 1 else ""
    return CheckResult("login shell", Outcome.OK, f"`{shell}` works; PATH={path[:120]}")


def check_remote_dir(ctx: DoctorContext) -> CheckResult:
    """The folder exists (or is made) and takes a file; its free space, like the local one."""
    folder = ctx.cfg.remote_dir
    q = shlex.quote(folder)
    conn = ctx.session.conn
    res = conn.run_shell(
        f"mkdir -p {q} && cd {q} && pwd && t=.hpcnn-doctor-$$ && : > \"$t\" && rm -f \"$t\" "
        "&& df -Pk .", check=False)
    lines = res.stdout.splitlines()
    if not res.ok or len(lines) < 3:
        return CheckResult("remote dir", Outcome.FAIL,
                           f"cannot write in {folder} on {conn.description}: "
                           f"{res.stderr.strip()[-300:]}",
                           "set cluster.remote_dir to a folder your cluster account can write "
                           "(relative paths are under its home)")
    absolute, fields = lines[0], lines[-1].split()
    ctx.facts["remote_dir"] = absolute
    ctx.session.registry.save_facts(ctx.session.host, remote_dir=absolute)
    free_gb = int(fields[3]) * 1024 / 1e9 if len(fields) > 3 and fields[3].isdigit() else None
    detail = absolute + (f" ({free_gb:.1f} GB free)" if free_gb is not None else "")
    if free_gb is not None and free_gb < MIN_FREE_GB:
        return CheckResult("remote dir", Outcome.WARN, detail,
                           f"less than {MIN_FREE_GB:.0f} GB free: preprocessed data and "
                           "checkpoints need room; choose another cluster.remote_dir")
    return CheckResult("remote dir", Outcome.OK, detail)


def check_scheduler(ctx: DoctorContext) -> CheckResult:
    """Detect the dialect (what ``auto`` uses), compare it with cluster.yaml, and ask the
    scheduler about a job id that does not exist: an answer, even "unknown id", means the
    scheduler is up and the dialect's status call works."""
    probe_ids = [_NO_SUCH_JOB]
    configured = ctx.cfg.cluster.scheduler
    conn = ctx.session.conn
    res = conn.run_shell(detect_line(), check=False)
    try:
        found = parse_detection(res.stdout)
    except HpcnnError as exc:
        if configured == "auto":
            return failed("scheduler", exc)
        found = None
    name = found.dialect if configured == "auto" and found else configured
    ctx.facts["dialect"] = name
    if found:
        ctx.session.registry.save_facts(ctx.session.host, dialect=found.dialect)
    dialect = get_dialect(name)
    status = conn.run(dialect.status_command(probe_ids), check=False)
    try:
        dialect.parse_status(status.stdout, status.stderr, status.returncode, probe_ids)
    except SchedulerUnavailable as exc:
        return unreachable("scheduler",
                           f"{name}: `{join_argv(dialect.status_command(probe_ids))}` did not "
                           f"answer: {exc}",
                           "check that the scheduler's commands are on the login shell's PATH "
                           "and that the scheduler is up (ask the cluster's admins)")
    evidence = f" ({found.evidence})" if found else ""
    detail = f"{name}{evidence}, answering"
    if found and found.dialect != name:
        return CheckResult("scheduler", Outcome.WARN, detail + f"; detected {found.dialect}",
                           f"cluster.scheduler says {configured}; `{found.dialect}` (or `auto`) "
                           "reports exit codes and walltime kills more faithfully")
    return CheckResult("scheduler", Outcome.OK, detail)


def check_job_memory(ctx: DoctorContext) -> CheckResult:
    """Grid Engine makes resources.mem an h_vmem cap on VIRTUAL memory (hpcnn.jobs.vmem): a
    value that would do on Slurm kills every fold there at its first allocations."""
    name = ctx.facts.get("dialect", ctx.cfg.cluster.scheduler)
    if name != vmem.GRID_ENGINE:
        return CheckResult("job memory", Outcome.OK,
                           f"{name} counts resident memory: resources.mem as asked")
    need = vmem.gb(vmem.training_vmem_mb(ctx.cfg))
    shortfall = vmem.vmem_shortfall(ctx.cfg)
    if shortfall:
        return CheckResult("job memory", Outcome.WARN, shortfall,
                           f"raise resources.mem to at least {need} (more for a GPU job), or "
                           "lower training.data_augmentation_workers")
    mem = ctx.cfg.resources.mem
    if mem is None:
        return CheckResult("job memory", Outcome.OK,
                           "no h_vmem asked (resources.mem unset): the queue's default applies; "
                           f"a training job maps at least {need} of virtual memory")
    return CheckResult("job memory", Outcome.OK,
                       f"h_vmem {vmem.gb(mem)} in all, at least the {need} of virtual memory a "
                       "training job maps")


def check_remote_python(ctx: DoctorContext) -> CheckResult:
    """Python and nnunetv2 after the user's environment.setup, as a job would see them."""
    line = render_setup(ctx.cfg) + f"python3 -c {shlex.quote(_PYTHON_PROBE)}"
    res = ctx.session.conn.run_shell(line, check=False)
    words = res.stdout.split()
    if not res.ok or len(words) < 2:
        return CheckResult("cluster python", Outcome.FAIL,
                           f"environment.setup + python3 failed (exit {res.returncode}): "
                           f"{res.stderr.strip()[-300:]}",
                           "fix environment.setup in cluster.yaml (conda activate, module load "
                           "or a venv) so that python3 works in a job")
    python, nnunet, torch = words[-3:] if len(words) >= 3 else (*words[-2:], "-")
    if nnunet == "-":
        return CheckResult("cluster python", Outcome.FAIL,
                           f"python {python}, but nnunetv2 is not importable after "
                           "environment.setup",
                           "install nnunetv2 on the cluster, or add its activation (conda, "
                           "module, venv) to environment.setup")
    local = ctx.facts.get("local_nnunet")
    detail = f"python {python}, nnunetv2 {nnunet}, torch {torch}"
    warning = version_warning(nnunet, torch)
    if warning:
        return CheckResult("cluster python", Outcome.WARN, f"{detail}; {warning[0]}", warning[1])
    if local and local != nnunet:
        return CheckResult("cluster python", Outcome.WARN, f"{detail}; this machine has {local}",
                           f"use the same nnunetv2 on both sides (pip install nnunetv2=={local})"
                           ": plans and checkpoints of one version may not load in another")
    return CheckResult("cluster python", Outcome.OK, detail)


def version_warning(nnunet: str, torch: str) -> tuple[str, str] | None:
    """(problem, fix) for versions that train badly or cannot run the whole method."""
    if torch.startswith("2.9."):
        return (f"torch {torch} runs 3D convolutions with AMP about 4x slower "
                "(pytorch/pytorch#166122), which is why nnunetv2 excludes torch 2.9.*",
                "install another torch where jobs run, e.g. pip install 'torch!=2.9.*', or "
                "load another torch module")
    problem = version_problem(nnunet, "the cascade and ensembles of configurations")
    if problem:
        return problem, "pip install 'nnunetv2>=2.7' where jobs run (and here)"
    return None


REMOTE_CHECKS: list[Check] = [
    check_ssh, check_login_shell, check_remote_dir, check_scheduler, check_job_memory,
    check_remote_python,
]


def accept_host_key(conn: SshConnection, confirm: Callable[[str], bool],
                    echo: Callable[[str], None]) -> bool:
    """``--accept-host-key``: record an unknown key after the user confirms it; refuse a
    changed one (hpcnn.remote.host_keys)."""
    from hpcnn.remote.host_keys import accept_host_key as accept

    return accept(conn, confirm, echo)
