"""``hpcnn sync --install-cron``: one crontab line per workspace that runs ``hpcnn sync`` the way
cron runs things (no terminal, a bare environment, working directory $HOME), with absolute paths
and its output appended to ``.hpcnn/sync.log``."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from hpcnn.config import Config
from hpcnn.errors import HpcnnError
from hpcnn.remote.ssh_common import SSH_CONFIG_ENV, ssh_config_file

_TAG = "# hpcnn-sync "


def _crontab() -> list[str]:
    if not shutil.which("crontab"):
        raise HpcnnError("crontab is not installed on this machine",
                         hint="install cron (e.g. `apt-get install cron`), or run `hpcnn sync` "
                              "from another scheduler")
    res = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    return res.stdout.splitlines() if res.returncode == 0 else []


def _write(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" if lines else ""
    res = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise HpcnnError(f"crontab refused the change: {res.stderr.strip()}")


def cron_line(cfg: Config, schedule: str, run_id: str | None) -> str:
    workspace = cfg.workspace.resolve()
    hpcnn = shutil.which("hpcnn") or f"{sys.executable} -m hpcnn.cli.main"
    argv = [*shlex.split(hpcnn)] if " " in hpcnn else [os.path.abspath(hpcnn)]
    if cfg.source is not None:
        argv += ["--config", str(cfg.source.resolve())]
    argv.append("sync")
    if run_id:
        argv += ["--run", run_id]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    ssh_config = ssh_config_file()
    if ssh_config:  # the ssh config this command used: cron's sync must use it too
        env[SSH_CONFIG_ENV] = os.path.abspath(ssh_config)
    assigns = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    log = workspace / ".hpcnn" / "sync.log"
    command = (f"cd {shlex.quote(str(workspace))} && {assigns} {shlex.join(argv)} "
               f">> {shlex.quote(str(log))} 2>&1")
    # cron turns an unescaped % of the command into a newline (and removes the backslash)
    return f"{schedule} {command.replace('%', chr(92) + '%')} {_TAG}{workspace}"


def install(cfg: Config, schedule: str, run_id: str | None = None) -> str:
    if len(schedule.split()) != 5 or any(c in schedule for c in "\n%"):
        raise HpcnnError(f"{schedule!r} is not a cron schedule of five fields",
                         hint='e.g. "*/30 * * * *" (every 30 minutes)')
    tag = f"{_TAG}{cfg.workspace.resolve()}"
    lines = [line for line in _crontab() if not line.endswith(tag)]
    line = cron_line(cfg, schedule, run_id)
    _write([*lines, line])
    return f"installed: {line}"


def uninstall(cfg: Config) -> str:
    tag = f"{_TAG}{cfg.workspace.resolve()}"
    lines = _crontab()
    kept = [line for line in lines if not line.endswith(tag)]
    _write(kept)
    return "removed this workspace's sync from crontab" if len(kept) < len(lines) else (
        "no crontab line for this workspace")
