"""``hpcnn sync``: the results prediction and review need, pulled back into the local
``nnUNet_results`` in nnU-Net's own layout. Made for cron.

Only finished folds are pulled, and of them only what prediction and review use (the final
checkpoint, the plans, the logs, the validation summary, hpcnn's provenance); ``--with-latest``,
``--with-validation-npz`` and ``--all`` widen that. Of the final checkpoint, the inference one
the launcher wrote on the cluster (launcher.INFERENCE: the weights and the keys prediction
reads, half of nnU-Net's file) lands as ``checkpoint_final.pth``; a fold trained before hpcnn
wrote it brings nnU-Net's own file, as do ``--full-checkpoints``, ``--with-latest`` and
``--all`` (for resuming here). A local ``checkpoint_final.pth`` equal to either file on the
cluster is up to date. One remote listing tells what changed (size and
mtime, as rsync decides); the changed files come in one transfer (one remote command with the
openssh transport), each written to a temporary name and renamed, so an interrupted sync never
replaces a good file with half of one, and nothing local is ever deleted.
A lock makes a second sync exit at once with the "locked" code.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcnn.errors import EXIT_OK, Locked
from hpcnn.fsutil import ensure_dir
from hpcnn.nnunet.launcher import FINAL, INFERENCE
from hpcnn.remote.ssh_common import (
    PARTIAL_SUFFIX,
    local_listing,
    parse_listing,
    remote_listing_line,
    to_copy,
)
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.services.status import RunStatus, run_status
from hpcnn.units import format_bytes
from hpcnn.workspace import RESULTS

MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
FOLD_FILES = (FINAL, "progress.png", "training_log_*.txt", "debug.json",
              "validation/summary.json", "hpcnn_provenance.json")
LATEST = ("checkpoint_latest.pth", "checkpoint_best.pth")
VALIDATION_NPZ = ("validation/*.npz", "validation/*.pkl")


@dataclass
class SyncResult:
    status: RunStatus
    model_dir: Path
    pulled: list[str] = field(default_factory=list)
    nbytes: int = 0
    synced_folds: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # completed, no final checkpoint there
    remote_dir: str = ""

    @property
    def exit_code(self) -> int:
        return self.status.exit_code


def wanted(rel: str, done_folds: set[int], *, latest: bool, npz: bool, everything: bool) -> bool:
    """Whether the file ``rel`` (relative to the run's results folder) is pulled."""
    first, _, rest = rel.partition("/")
    if not rest:
        return everything or rel in MODEL_FILES
    if not first.startswith("fold_") or not first[5:].isdigit() or int(first[5:]) not in done_folds:
        return False
    if everything:
        return True
    patterns = FOLD_FILES + (LATEST if latest else ()) + (VALIDATION_NPZ if npz else ())
    return any(fnmatch.fnmatch(rest, p) for p in patterns)


def sync_run(session: Session, run_id: str | None = None, *, latest: bool = False,
             npz: bool = False, everything: bool = False, full_checkpoints: bool = False,
             echo: Callable[[str], None] = lambda s: None) -> SyncResult:
    """Refresh the run's state and pull what its finished folds need (see the module doc)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(session.workspace.state_dir / "sync.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Locked("another hpcnn sync is running in this workspace",
                     hint="let it finish (cron runs overlap when a sync takes longer than the "
                          "interval)") from None
    try:
        return _sync(session, run_id, latest=latest, npz=npz, everything=everything,
                     slim=not (full_checkpoints or latest or everything), echo=echo)
    finally:
        lock.release()


def _sync(session: Session, run_id: str | None, *, latest: bool, npz: bool, everything: bool,
          slim: bool, echo: Callable[[str], None]) -> SyncResult:
    status = run_status(session, run_id)
    run = status.run
    local_dir = session.workspace.results / run.results_folder
    result = SyncResult(status, local_dir)
    done = {f.view.fold for f in status.folds if f.view.state == JobState.COMPLETED}
    if not done:
        return result
    remote_dir = session.remote.path(RESULTS, run.results_folder)
    result.remote_dir = remote_dir
    _remove_partial_downloads(local_dir, echo)
    listing = parse_listing(session.conn.run_shell(remote_listing_line(remote_dir),
                                                   check=False).stdout)
    result.missing = sorted(f for f in done if f"fold_{f}/{FINAL}" not in listing)
    needed = {rel: meta for rel, meta in listing.items()
              if wanted(rel, done, latest=latest, npz=npz, everything=everything)}
    here = local_listing(local_dir)
    lands_as = _inference_instead(needed, listing, here, local_dir) if slim else {}
    # Temporary files of a write in progress there (hpcnn's, nnU-Net's) are never pulled.
    todo = {rel: listing[rel] for rel in to_copy(needed, here, ["*.tmp*"])}
    started = time.time()

    def landed(rel: str) -> None:
        nonlocal started
        size, mtime = todo[rel]
        os.utime(local_dir / rel, (mtime, mtime))  # as listed: the next sync compares equal
        name = lands_as.get(rel, rel)
        if name != rel:
            os.replace(local_dir / rel, local_dir / name)
        result.pulled.append(name)
        result.nbytes += size
        kind = "the inference checkpoint, " if name != rel else ""
        echo(f"pulled {name} ({kind}{format_bytes(size)}, {time.time() - started:.1f} s)")
        started = time.time()

    if todo:
        for folder in sorted({(local_dir / rel).parent for rel in todo}):
            ensure_dir(folder)  # private, as the rest of the workspace's data
        session.conn.fetch_files(remote_dir, local_dir, list(todo), on_file=landed)
    result.synced_folds = sorted(
        f for f in done if (local_dir / f"fold_{f}" / FINAL).is_file())
    if result.pulled:
        tid = session.registry.start_transfer(run.id, "pull", remote_dir, str(local_dir))
        session.registry.finish_transfer(tid, ok=True, files=len(result.pulled),
                                         nbytes=result.nbytes)
    return result


def _inference_instead(needed: dict[str, tuple[int, int]], listing: dict[str, tuple[int, int]],
                       here: dict[str, tuple[int, int]], local_dir: Path) -> dict[str, str]:
    """Swap each needed final checkpoint for the fold's inference checkpoint where the cluster
    has one as new as it, unless the local file already equals either; returns inference name
    → the name it lands as. One that a killed sync landed but did not rename is renamed now."""
    lands_as = {}
    for final in [rel for rel in needed if rel.endswith(f"/{FINAL}")]:
        light = f"{final.rsplit('/', 1)[0]}/{INFERENCE}"
        if light not in listing or listing[light][1] < needed[final][1]:
            continue  # none (trained before hpcnn wrote one) or stale: nnU-Net's own file comes
        meta = needed.pop(final)
        if here.get(final) in (meta, listing[light]):
            continue
        if here.get(light) == listing[light]:
            os.replace(local_dir / light, local_dir / final)
            here[final] = here.pop(light)
            continue
        needed[light] = listing[light]
        lands_as[light] = final
    return lands_as


def _remove_partial_downloads(local_dir: Path, echo: Callable[[str], None]) -> None:
    """Delete what a sync killed mid-file left (its temporary files; the file it was replacing
    is untouched). Safe under the sync lock: no other sync is writing here."""
    if not local_dir.is_dir():
        return
    for partial in local_dir.rglob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
        echo(f"removed {partial.relative_to(local_dir)}, left by an interrupted sync")


def all_synced(result: SyncResult) -> bool:
    return result.exit_code == EXIT_OK and len(result.synced_folds) == len(result.status.folds)

