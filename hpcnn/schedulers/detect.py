"""Which scheduler a cluster runs, from ONE shell line run in the login shell.

``qstat --version`` answers ``pbs_version = 20.0.1`` on PBS Pro/OpenPBS and ``Version: 6.1.2``
on Torque; Slurm has ``sbatch`` and ``squeue``. Slurm's Torque wrappers (``qsub``/``qstat``
without ``--version``) often sit beside Slurm: then ``auto`` chooses slurm, because native
``squeue`` reports exit codes, TIMEOUT and CANCELLED and the reasons a job waits, all of which
the wrapper's ``qstat`` folds into ``C``/``Q``. A cluster answering both a real PBS ``qstat``
and Slurm is ambiguous and must be named in cluster.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcnn.errors import SchedulerError

_COMMANDS = ("sbatch", "squeue", "qsub", "qstat")
_HAVE = "hpcnn-have"
_VERSION = "hpcnn-qstat"

DETECT_LINE = (
    f"for c in {' '.join(_COMMANDS)}; do "
    f'command -v "$c" >/dev/null 2>&1 && echo "{_HAVE} $c"; done; '
    "if command -v qstat >/dev/null 2>&1; then "
    f'qstat --version 2>&1 </dev/null | head -n 5 | sed "s/^/{_VERSION} /"; fi; true'
)
"""Lists which scheduler commands the login shell finds, then what ``qstat --version`` says."""

_FIX = "set cluster.scheduler in cluster.yaml to torque, pbspro or slurm"


@dataclass(frozen=True)
class Detection:
    dialect: str
    evidence: str


def parse_detection(stdout: str) -> Detection:
    """The dialect from DETECT_LINE's output; SchedulerError when none or several fit."""
    have = {line.split()[1] for line in stdout.splitlines()
            if line.startswith(_HAVE + " ") and len(line.split()) > 1}
    version = "\n".join(line[len(_VERSION) + 1:] for line in stdout.splitlines()
                        if line.startswith(_VERSION + " "))
    pbs = re.search(r"pbs_version\s*=\s*(\S+)", version)
    torque = re.search(r"^\s*version:\s*(\S+)", version, re.I | re.M)
    real_pbs = ("pbspro", f"PBS Pro {pbs.group(1)}") if pbs else (
        ("torque", f"Torque {torque.group(1)}") if torque else None)
    slurm = {"sbatch", "squeue"} <= have
    if slurm and real_pbs:
        raise SchedulerError(
            f"both Slurm (sbatch, squeue) and {real_pbs[1]} (qstat --version) are on the "
            "cluster's PATH; hpcnn cannot tell which one runs your jobs", hint=_FIX)
    if real_pbs:
        return Detection(real_pbs[0], f"qstat --version: {real_pbs[1]}")
    if slurm:
        wrappers = "; Slurm's Torque wrappers qsub/qstat too" if "qsub" in have else ""
        return Detection("slurm", f"sbatch and squeue found{wrappers}")
    if have & {"qsub", "qstat"}:
        raise SchedulerError(
            "qsub/qstat found but `qstat --version` names neither Torque nor PBS Pro: "
            + (version.strip().splitlines() or ["no answer"])[0], hint=_FIX)
    raise SchedulerError(
        "no scheduler commands (sbatch, squeue, qsub, qstat) on the PATH of the cluster's "
        "login shell",
        hint="check cluster.login_shell (a login shell, e.g. `bash -lc`, loads the cluster's "
             "profile and modules) or set cluster.scheduler explicitly")
