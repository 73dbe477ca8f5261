"""Writing files so that a reader never sees half of one, and two writers never collide; and
the permissions of the folders and files that hold the user's data."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` to a unique temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class Modes:
    """Permission bits for the folders and files hpcnn creates for the user's data."""

    dir: int
    file: int


PRIVATE = Modes(0o700, 0o600)
"""The default: patient scans and the names in ``cases.csv`` are for their owner only."""
GROUP_SHARED = Modes(0o750, 0o640)
"""For a team that shares one group (the workspace's folders then also need that group)."""


def data_modes() -> Modes:
    """The modes of the workspace's data: one place, so a config key can widen them."""
    return PRIVATE


def ensure_dir(path: Path, modes: Modes | None = None) -> Path:
    """Create ``path`` and its missing parents with ``modes.dir`` whatever the umask; folders
    that already exist keep their mode (the user may have chosen it)."""
    mode = (modes or data_modes()).dir
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, mode)
    return path


def restrict_tree(root: Path, modes: Modes | None = None) -> None:
    """Give ``root`` and everything under it (written by libraries that follow the umask)
    ``modes``; symbolic links are left alone."""
    chosen = modes or data_modes()
    os.chmod(root, chosen.dir)
    for folder, dirs, files in os.walk(root):
        for names, mode in ((dirs, chosen.dir), (files, chosen.file)):
            for name in names:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, mode)


@contextmanager
def private_log(workspace_state: Path, name: str) -> Iterator[tuple[Path, TextIO]]:
    """``<workspace_state>/logs/<name>`` opened for writing, readable by its owner only (logs of
    nnU-Net's commands name the dataset's files), with its path."""
    folder = ensure_dir(workspace_state / "logs", PRIVATE)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as handle:
        yield path, handle
