"""The Connection for this machine: the same API as SSH, so services never special-case local.

Commands run in ``bash -c`` with the caller's environment (no login shell: the laptop's current
PATH is what the user expects). Transfers are copies; when source and destination are the same
folder (a local workspace that is also the jobs' directory) they do nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hpcnn.remote.base import Connection, Result, excluded, in_members, login_wrap


class LocalConnection(Connection):
    description = "this machine"
    packs_output = False  # no network to save: compressing would only cost CPU

    def _run(self, line: str, *, stdin: str | None, timeout: float | None) -> Result:
        proc = subprocess.run(
            ["bash", "-c", login_wrap("", line)],  # umask 077, as on a cluster
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(proc.stdout, proc.stderr, proc.returncode)

    def put(self, local: Path, remote: str) -> None:
        _copy_file(Path(local), Path(remote))

    def get(self, remote: str, local: Path) -> None:
        _copy_file(Path(remote), Path(local))

    def push_tree(self, local: Path, remote: str, *, exclude: Sequence[str] = (),
                  members: Sequence[str] = ()) -> None:
        _copy_tree(Path(local), Path(remote), exclude, members)

    def pull_tree(self, remote: str, local: Path, *, exclude: Sequence[str] = ()) -> None:
        _copy_tree(Path(remote), Path(local), exclude)


def _copy_file(src: Path, dst: Path) -> None:
    """Copy via a temporary name and rename, so a reader never sees half a file."""
    if dst.exists() and src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-hpcnn")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _copy_tree(src: Path, dst: Path, exclude: Sequence[str],
               members: Sequence[str] = ()) -> None:
    """Copy new and changed files (size or mtime differ); never delete at the destination."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    if dst.exists() and src.resolve() == dst.resolve():
        return
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if excluded(rel, exclude) or not in_members(rel, members):
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        st = path.stat()
        if target.exists():
            tt = target.stat()
            if tt.st_size == st.st_size and int(tt.st_mtime) == int(st.st_mtime):
                continue
        _copy_file(path, target)
