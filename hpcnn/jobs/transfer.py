"""What moves between the laptop and where jobs run, and in which direction.

A push moves exactly what the jobs need: hpcnn's job files (the launcher and the packaged
trainers) and one dataset — ``nnUNet_preprocessed/DatasetX`` for training, or
``nnUNet_raw/DatasetX`` when the cluster preprocesses — or, for a prediction job, the images to
predict, staged in nnU-Net's naming. Never ``nnUNet_results`` (results only
come back), never a deletion on the cluster. Every transfer is incremental (rsync or SFTP through
the session's connection, see hpcnn.remote) and recorded in the registry.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hpcnn.errors import HpcnnError
from hpcnn.remote.base import Connection
from hpcnn.state import Registry
from hpcnn.units import format_bytes
from hpcnn.workspace import PREPROCESSED, RAW, RemoteLayout, Workspace

_SKIP = ("__pycache__", "*.pyc", "*.tmp-hpcnn", ".rsync-partial", "cases.csv")
"""Never pushed: caches, temporaries, and ``cases.csv`` (the map from case ids back to the
original, possibly identifying, file names stays on the laptop)."""
FREE_MARGIN = 1.05
"""Room asked for on the cluster beyond the bytes still to send."""


@dataclass(frozen=True)
class PushItem:
    what: str
    local: Path
    remote: str
    members: tuple[str, ...] = ()
    """Only these entries of the folder ``local`` (all of it when empty), landing under the
    same names in ``remote``: hpcnn's job files are two entries of its package folder, sent
    by one transfer (a no-op push otherwise paid a round trip and the launcher's 26 kB)."""

    @property
    def paths(self) -> list[Path]:
        """The local files and folders the item moves."""
        return [self.local / m for m in self.members] if self.members else [self.local]

    @cached_property
    def size(self) -> int:
        return sum(p.stat().st_size if p.is_file() else
                   sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                   for p in self.paths)


def push_items(ws: Workspace, remote: RemoteLayout, dataset: str, *,
               raw: bool = False) -> list[PushItem]:
    """What a run's jobs need where they run, local → remote."""
    tree = RAW if raw else PREPROCESSED
    return [
        *job_file_items(remote),
        PushItem(f"{tree}/{dataset}", (ws.raw if raw else ws.preprocessed) / dataset,
                 remote.path(tree, dataset)),
    ]


def job_file_items(remote: RemoteLayout) -> list[PushItem]:
    """hpcnn's own files that every job runs: the launcher and the packaged trainers (a
    prediction looks the trainer class up there too)."""
    from hpcnn.nnunet import launcher_path, trainer_dir

    launcher, trainers = launcher_path(), trainer_dir()
    assert launcher.parent == trainers.parent, "the job files share one package folder"
    assert (remote.launcher, remote.trainers_dir) == (
        posixpath.join(remote.lib, launcher.name), posixpath.join(remote.lib, trainers.name))
    return [PushItem("job files (launcher, trainers)", launcher.parent, remote.lib,
                     members=(launcher.name, trainers.name))]


def prepare(conn: Connection, remote: RemoteLayout, items: list[PushItem]) -> None:
    """Make the items' remote folders and refuse a push the cluster has no room for: the bytes
    not yet there (each item's size less what its remote copy already holds) against ``df``
    of the remote dir. One remote command."""
    quoted = " ".join(shlex.quote(i.remote) for i in items)
    parents = " ".join(shlex.quote(posixpath.dirname(i.remote)) for i in items)
    root = shlex.quote(remote.root)
    probe = conn.transfer_probe()
    res = conn.run_shell(f"mkdir -p {root} {parents} && df -Pk {root} | tail -n 1; "
                         f"for p in {quoted}; do du -sk \"$p\" 2>/dev/null || echo 0 \"$p\"; done"
                         + (f"; {probe}" if probe else ""), check=False)
    if probe and res.ok:
        conn.transfer_probed(res.stdout)
    lines = [line for line in res.stdout.splitlines() if not line.startswith("__HPCNN_")]
    if not res.ok and not lines:
        return
    fields = lines[0].split() if lines else []
    free = int(fields[3]) * 1024 if len(fields) > 3 and fields[3].isdigit() else None
    there = sum(int(line.split()[0]) * 1024 for line in lines[1:]
                if line.split() and line.split()[0].isdigit())
    needed = max(0, sum(i.size for i in items) - there)
    if free is not None and needed * FREE_MARGIN > free:
        raise HpcnnError(
            f"not enough room on {conn.description}: {remote.root} has {format_bytes(free)} free "
            f"and the push needs about {format_bytes(needed)} more",
            hint="free space there (`hpcnn clean` removes hpcnn's copies of finished runs), or "
                 "choose another cluster.remote_dir")


def push(conn: Connection, registry: Registry, remote: RemoteLayout, items: list[PushItem], *,
         run: str | None, echo: Callable[[str], None] = lambda s: None) -> int:
    """Copy each item (new and changed files only); returns the bytes of the local items."""
    for item in items:
        for path in item.paths:
            if not path.exists():
                raise HpcnnError(f"{path} does not exist: nothing to push for {item.what}",
                                 hint="preprocess the dataset first (`hpcnn preprocess NAME`)")
    prepare(conn, remote, items)
    total = 0
    for item in items:
        size = item.size
        total += size
        echo(f"push {item.what} ({format_bytes(size)}) → {conn.description}:{item.remote}")
        tid = registry.start_transfer(run, "push", str(item.local), item.remote)
        ok = False
        try:
            if item.local.is_file():
                conn.put(item.local, item.remote)
            else:
                conn.push_tree(item.local, item.remote, exclude=_SKIP, members=item.members)
            ok = True
        finally:
            registry.finish_transfer(tid, ok=ok, files=sum(_count(p) for p in item.paths),
                                     nbytes=size)
    return total


def _count(path: Path) -> int:
    return 1 if path.is_file() else sum(1 for p in path.rglob("*") if p.is_file())
