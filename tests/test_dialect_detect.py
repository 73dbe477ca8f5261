"""Which dialect ``auto`` picks from the one detection line's output (each dialect's own probe,
tagged with its name), and the line itself run by a plain sh against stand-in commands."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from captures import load

from hpcnn.errors import SchedulerError
from hpcnn.schedulers.detect import detect_line, parse_detection

SH = shutil.which("sh") or "/bin/sh"


def answer(have: list[str], version: str = "") -> str:
    """What the detection line prints on a cluster that has the commands ``have`` and whose
    ``qstat --version`` says ``version``."""
    lines = [f"hpcnn-probe slurm /usr/bin/{c}" for c in have if c in ("sbatch", "squeue", "qsub")]
    if "qstat" in have:
        for dialect in ("pbspro", "torque"):
            lines += [f"hpcnn-probe {dialect} {line}" for line in version.splitlines()]
    return "\n".join(lines) + "\n"


def test_slurm_with_its_torque_wrappers_is_slurm() -> None:
    wrapper = load("captured", "torque_qstat_version").stderr
    found = parse_detection(answer(["sbatch", "squeue", "qsub", "qstat"], wrapper))
    assert found.dialect == "slurm" and "wrappers" in found.evidence


@pytest.mark.parametrize(("group", "dialect"), [("pbspro", "pbspro"), ("torque", "torque")])
def test_qstat_version_names_pbs_pro_or_torque(group: str, dialect: str) -> None:
    found = parse_detection(answer(["qsub", "qstat"], load(group, "qstat_version").stdout))
    assert found.dialect == dialect


def test_ambiguous_and_missing_are_errors_with_a_fix() -> None:
    both = answer(["sbatch", "squeue", "qsub", "qstat"], load("pbspro", "qstat_version").stdout)
    with pytest.raises(SchedulerError, match="pbspro .* and slurm") as info:
        parse_detection(both)
    assert "cluster.scheduler" in str(info.value)
    with pytest.raises(SchedulerError, match="recognises none"):
        parse_detection(answer(["qsub", "qstat"], "qstat: invalid option"))
    with pytest.raises(SchedulerError, match="no scheduler commands") as info:
        parse_detection("")
    assert "login_shell" in str(info.value)


def test_detection_line_runs_in_plain_sh(tmp_path) -> None:
    """The line itself, against stand-in commands: each probe's answer (stdout and stderr)
    arrives tagged with its dialect, and a missing command is no claim."""
    for tool in ("head", "sed"):  # only these and the stand-ins are on the PATH
        (tmp_path / tool).symlink_to(shutil.which(tool))
    for name in ("sbatch", "squeue"):
        (tmp_path / name).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / name).chmod(0o755)
    env = {"PATH": str(tmp_path)}

    def run() -> str:
        return subprocess.run([SH, "-c", detect_line()], capture_output=True, text=True,
                              env=env, check=True).stdout

    out = run()
    assert f"hpcnn-probe slurm {tmp_path}/sbatch" in out.splitlines()
    assert parse_detection(out).dialect == "slurm"
    (tmp_path / "qstat").write_text("#!/bin/sh\necho 'pbs_version = 22.05.11' >&2\n")
    (tmp_path / "qstat").chmod(0o755)
    out = run()
    assert "hpcnn-probe pbspro pbs_version = 22.05.11" in out.splitlines()
    with pytest.raises(SchedulerError, match="pbspro"):
        parse_detection(out)
