"""Which scheduler a cluster runs, from ONE shell line run in the login shell.

Each dialect brings its own probe (``Dialect.detect_probe``: ``qstat --version`` for the PBS
family, ``command -v sbatch ...`` for Slurm, ``qstat -help`` for Grid Engine) and reads its
own answer (``Dialect.detect``). The line runs every probe once, each answer tagged with the
dialect's name. Exactly one dialect must recognise its scheduler: Slurm's Torque wrappers
(``qsub``/``qstat`` without ``--version``) are recognised by no PBS dialect, so a Slurm cluster
with wrappers is Slurm; a cluster where two answer (a real PBS ``qstat`` beside Slurm) is
ambiguous and must be named in cluster.yaml.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from hpcnn.errors import SchedulerError
from hpcnn.schedulers import dialect_names, get_dialect
from hpcnn.schedulers.base import Dialect

_TAG = "hpcnn-probe"
_MAX_LINES = 5


@dataclass(frozen=True)
class Detection:
    dialect: str
    evidence: str


def _probing() -> list[Dialect]:
    return [d for d in (get_dialect(n) for n in dialect_names()) if d.detect_probe]


def detect_line(dialects: list[Dialect] | None = None) -> str:
    """One POSIX shell line: every probe's output (stdout and stderr, first lines), each line
    prefixed with ``hpcnn-probe <dialect>``."""
    parts = [
        f"( {d.detect_probe} ) 2>&1 </dev/null | head -n {_MAX_LINES} | "
        f"sed {shlex.quote(f's/^/{_TAG} {d.name} /')}"
        for d in (dialects if dialects is not None else _probing())
    ]
    return "; ".join([*parts, "true"])


def parse_detection(stdout: str, dialects: list[Dialect] | None = None) -> Detection:
    """The dialect from ``detect_line``'s output; SchedulerError when none or several fit."""
    dialects = dialects if dialects is not None else _probing()
    answers: dict[str, list[str]] = {d.name: [] for d in dialects}
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        name, _, text = rest.partition(" ")
        if tag == _TAG and name in answers:
            answers[name].append(text)
    claims = [(d.name, ev) for d in dialects if (ev := d.detect("\n".join(answers[d.name])))]
    fix = f"set cluster.scheduler in cluster.yaml to one of {', '.join(dialect_names())}"
    if len(claims) == 1:
        return Detection(*claims[0])
    if claims:
        which = " and ".join(f"{name} ({evidence})" for name, evidence in claims)
        raise SchedulerError(
            f"{which} are all on the cluster's PATH; hpcnn cannot tell which one runs your jobs",
            hint=fix)
    said = [line for lines in answers.values() for line in lines
            if line.strip() and "not found" not in line]
    if said:
        raise SchedulerError("scheduler commands answered, but hpcnn recognises none of them: "
                             + said[0], hint=fix)
    raise SchedulerError(
        "no scheduler commands (sbatch, squeue, qsub, qstat) on the PATH of the cluster's "
        "login shell",
        hint="check cluster.login_shell (a login shell, e.g. `bash -lc`, loads the cluster's "
             "profile and modules) or set cluster.scheduler explicitly")
