"""Doctor's checks of this machine: Python, nnU-Net, the workspace, the local queue."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys

from hpcnn.services.doctor.base import MIN_FREE_GB, CheckResult, DoctorContext, Outcome


def local_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python(ctx: DoctorContext) -> CheckResult:
    version = ".".join(map(str, sys.version_info[:3]))
    return CheckResult("python", Outcome.OK, f"{version} ({sys.executable})")


def check_local_nnunet(ctx: DoctorContext) -> CheckResult:
    version = local_version("nnunetv2")
    if version is None:
        outcome = Outcome.FAIL if ctx.cfg.cluster.is_local else Outcome.WARN
        return CheckResult(
            "nnunetv2 (this machine)", outcome, "not installed",
            'pip install ".[nnunet]" from hpcnn\'s folder (needed here to import datasets, '
            "preprocess, predict)",
        )
    ctx.facts["local_nnunet"] = version
    return CheckResult("nnunetv2 (this machine)", Outcome.OK, version)


def check_workspace(ctx: DoctorContext) -> CheckResult:
    ws = ctx.cfg.workspace
    try:
        ws.mkdir(parents=True, exist_ok=True)
        probe = ws / f".hpcnn-doctor-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return CheckResult("workspace", Outcome.FAIL, f"{ws}: {exc.strerror}",
                           "set `workspace:` in cluster.yaml to a folder you can write")
    free_gb = shutil.disk_usage(ws).free / 1e9
    detail = f"{ws} ({free_gb:.1f} GB free)"
    if free_gb < MIN_FREE_GB:
        return CheckResult("workspace", Outcome.WARN, detail,
                           f"less than {MIN_FREE_GB:.0f} GB free: nnU-Net data and checkpoints "
                           "need room")
    return CheckResult("workspace", Outcome.OK, detail)


def check_local_queue(ctx: DoctorContext) -> CheckResult:
    from hpcnn.schedulers.localq import queue_dir

    session = ctx.session
    res = session.conn.run(session.dialect.status_command([]), check=False)
    if not res.ok:
        return CheckResult("local scheduler", Outcome.FAIL, res.stderr.strip()[-300:],
                           "check that the hpcnn package is importable by this Python")
    running = len([line for line in res.stdout.splitlines() if line.strip()])
    return CheckResult(
        "local scheduler", Outcome.OK,
        f"queue {queue_dir()}, {running} job(s) active, max_parallel "
        f"{ctx.cfg.local.max_parallel}",
    )


def check_local_device(ctx: DoctorContext) -> CheckResult:
    """The device the local scheduler's jobs train on (``-device`` from training.device) is
    one this machine's PyTorch sees: otherwise every fold fails at its start."""
    from hpcnn.errors import DataError
    from hpcnn.nnunet.predict import resolve_device

    device = ctx.cfg.training.device
    try:
        resolve_device(device)
    except DataError:
        there = resolve_device("auto")
        return CheckResult(
            "training device", Outcome.FAIL,
            f"training.device is {device} (the default is cuda), but this machine's PyTorch "
            f"sees no {device.upper()} device: every local job would fail at its start",
            f"set `training: {{device: {there}}}` in cluster.yaml (`hpcnn init` asks)")
    if device == "cpu":
        return CheckResult("training device", Outcome.OK,
                           "cpu (training on a CPU takes days for a real dataset)")
    return CheckResult("training device", Outcome.OK, device)


COMMON_CHECKS = [check_python, check_local_nnunet, check_workspace]
"""This machine's links, checked first whatever the scheduler."""
