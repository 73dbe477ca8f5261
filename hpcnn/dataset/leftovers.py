"""The hidden folders an import works in, and what a killed import leaves of them.

An import builds ``.DatasetNNN_Name.importing-HOST-PID-XXXX`` beside the destination and, with
``--force``, moves the dataset it replaces to ``.DatasetNNN_Name.replaced-HOST-PID-XXXX`` for the
moment of the swap. A signal cleans both up (interrupt.py); SIGKILL or a power cut cannot. The
next import, check or preprocess calls ``sweep``: a folder whose import is no longer running on
this machine is removed, except a moved-aside dataset whose replacement never arrived, which is
put back. Folders named by another machine (a shared file system) or by an older hpcnn cannot be
judged from here, so they are reported with the command that removes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import uuid
from pathlib import Path

from hpcnn.dataset.findings import Finding, fix, notice

IMPORTING, REPLACED = "importing", "replaced"
_NAME = re.compile(r"\.(?P<folder>Dataset\d{3}_.+)\.(?P<kind>importing|replaced)-(?P<rest>.+)")
_OWNER = re.compile(r"(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}")


def work_folder(destination: Path, kind: str) -> Path:
    """The hidden folder beside ``destination`` for ``kind`` (importing or replaced), named
    after this machine and process so that ``sweep`` can tell whether its import still runs."""
    return destination.with_name(f".{destination.name}.{kind}-{_host()}-{os.getpid()}-"
                                 f"{uuid.uuid4().hex[:8]}")


def sweep(raw: Path) -> list[Finding]:
    """Remove (or report) what killed imports left in ``raw``; one finding per folder."""
    if not raw.is_dir():
        return []
    host = _host()
    findings = []
    for path in sorted(raw.glob(".Dataset*")):
        m = _NAME.fullmatch(path.name)
        if not m or not path.is_dir():
            continue
        owner = _OWNER.fullmatch(m["rest"])
        size = _size(path)
        if owner is None or owner["host"] != host:
            who = f"on {owner['host']}" if owner else "by an older hpcnn"
            findings.append(notice(path.name, f"left by an import {who} ({size}); whether that "
                                   "import still runs cannot be told from here: "
                                   + _command(path, raw / m["folder"], m["kind"])))
            continue
        if _running(int(owner["pid"])):
            continue
        destination = raw / m["folder"]
        if m["kind"] == REPLACED and not destination.exists():
            path.rename(destination)
            findings.append(fix(m["folder"], "put back: an import killed while replacing it had "
                                "moved it aside"))
            continue
        shutil.rmtree(path, ignore_errors=True)
        findings.append(fix(path.name, f"removed ({size}): left by an import that was killed "
                            f"(process {owner['pid']})"))
    return findings


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _command(path: Path, destination: Path, kind: str) -> str:
    if kind == REPLACED and not destination.exists():
        return (f"once no import runs, put the dataset back: mv {shlex.quote(str(path))} "
                f"{shlex.quote(str(destination))}")
    return f"once no import runs: rm -rf {shlex.quote(str(path))}"


def _size(path: Path) -> str:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return f"{total / 2**20:.1f} MB"
