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
import json
import os
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcnn.errors import EXIT_OK, HpcnnError, Locked
from hpcnn.fsutil import ensure_dir
from hpcnn.nnunet.choice import (
    CHOICE,
    INFORMATION,
    INSTRUCTIONS,
    MAX_JSON_BYTES,
    POSTPROCESSING,
    Choice,
    Trained,
)
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
from hpcnn.services.status import RunStatus, experiment_status, worst_exit
from hpcnn.units import format_bytes
from hpcnn.workspace import RESULTS

MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
FOLD_FILES = (FINAL, "progress.png", "training_log_*.txt", "debug.json",
              "validation/summary.json", "hpcnn_provenance.json")
LATEST = ("checkpoint_latest.pth", "checkpoint_best.pth")
VALIDATION_NPZ = ("validation/*.npz", "validation/*.pkl")
CROSSVAL_PREFIX = "crossval_results_folds_"
CROSSVAL_FILES = ("summary.json", POSTPROCESSING, "postprocessed/summary.json")
"""Of a configuration's or an ensemble's cross-validation (find_best_configuration): what
choosing and predicting read, not the merged validation segmentations."""


@dataclass
class SyncResult:
    """One configuration's (one run's) part of a sync."""

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


@dataclass
class ExperimentSync:
    """A sync of the experiment's configurations, and of what find_best_configuration wrote
    beside them (its answer, the cross-validation summaries, the postprocessing)."""

    runs: list[SyncResult]
    results: Path  # nnUNet_results/DatasetNNN_Name here
    method_files: list[str] = field(default_factory=list)
    choice: Choice | None = None
    """Recorded from a find_best job's answer newer than hpcnn's record of it."""
    choice_problem: str = ""

    @property
    def exit_code(self) -> int:
        return worst_exit([r.status for r in self.runs])


def wanted(rel: str, done_folds: set[int], *, latest: bool, npz: bool, everything: bool) -> bool:
    """Whether the file ``rel`` (relative to the run's results folder) is pulled."""
    first, _, rest = rel.partition("/")
    if not rest:
        return everything or rel in MODEL_FILES
    if first.startswith(CROSSVAL_PREFIX):
        return everything or rest in CROSSVAL_FILES
    if not first.startswith("fold_") or not first[5:].isdigit() or int(first[5:]) not in done_folds:
        return False
    if everything:
        return True
    patterns = FOLD_FILES + (LATEST if latest else ()) + (VALIDATION_NPZ if npz else ())
    return any(fnmatch.fnmatch(rest, p) for p in patterns)


def method_file(rel: str) -> bool:
    """Whether ``rel`` (relative to the dataset's results folder) is part of find-best's answer
    that choosing and predicting read: its answer and instructions, hpcnn's record of it, and
    each ensemble's summaries and postprocessing (not the ensembles' segmentations)."""
    if rel in (INFORMATION, INSTRUCTIONS, CHOICE):
        return True
    first, _, rest = rel.partition("/")
    return first == "ensembles" and rest.partition("/")[2] in CROSSVAL_FILES


def sync_run(session: Session, run_id: str | None = None,
             configurations: list[str] | None = None, *, latest: bool = False,
             npz: bool = False, everything: bool = False, full_checkpoints: bool = False,
             echo: Callable[[str], None] = lambda s: None) -> ExperimentSync:
    """Refresh the runs' state and pull what their finished folds and find-best's answer need
    (see the module doc): every configuration of the experiment of ``run_id`` (default the
    most recent), or ``configurations`` of it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(session.workspace.state_dir / "sync.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Locked("another hpcnn sync is running in this workspace",
                     hint="let it finish (cron runs overlap when a sync takes longer than the "
                          "interval)") from None
    try:
        return _sync(session, run_id, configurations, latest=latest, npz=npz,
                     everything=everything,
                     slim=not (full_checkpoints or latest or everything), echo=echo)
    finally:
        lock.release()


def _sync(session: Session, run_id: str | None, configurations: list[str] | None, *,
          latest: bool, npz: bool, everything: bool, slim: bool,
          echo: Callable[[str], None]) -> ExperimentSync:
    statuses = experiment_status(session, run_id, configurations)
    dataset = statuses[0].run.dataset
    local_root = session.workspace.results / dataset
    remote_root = session.remote.path(RESULTS, dataset)
    out = ExperimentSync([SyncResult(s, session.workspace.results / s.run.results_folder)
                          for s in statuses], local_root)
    done = {r.status.run: {f.view.fold for f in r.status.folds
                           if f.view.state == JobState.COMPLETED} for r in out.runs}
    if not any(done.values()):
        return out
    _remove_partial_downloads(local_root, echo)
    listing = parse_listing(session.conn.run_shell(remote_listing_line(remote_root),
                                                   check=False).stdout)
    here = local_listing(local_root)
    todo: dict[str, tuple[int, int]] = {}
    lands_as: dict[str, str] = {}
    owner: dict[str, SyncResult] = {}
    for result in out.runs:
        run = result.status.run
        prefix = posixpath.basename(run.results_folder) + "/"
        result.remote_dir = f"{remote_root}/{prefix[:-1]}"
        run_listing = {rel[len(prefix):]: meta for rel, meta in listing.items()
                       if rel.startswith(prefix)}
        run_here = {rel[len(prefix):]: meta for rel, meta in here.items()
                    if rel.startswith(prefix)}
        result.missing = sorted(f for f in done[run] if f"fold_{f}/{FINAL}" not in run_listing)
        needed = {rel: meta for rel, meta in run_listing.items()
                  if wanted(rel, done[run], latest=latest, npz=npz, everything=everything)}
        renames = (_inference_instead(needed, run_listing, run_here, result.model_dir)
                   if slim else {})
        lands_as.update({prefix + a: prefix + b for a, b in renames.items()})
        # Temporary files of a write in progress there (hpcnn's, nnU-Net's) are never pulled.
        for rel in to_copy(needed, run_here, ["*.tmp*"]):
            todo[prefix + rel] = run_listing[rel]
            owner[prefix + rel] = result
    method = {rel: meta for rel, meta in listing.items() if method_file(rel)}
    todo.update({rel: listing[rel] for rel in to_copy(method, here, ["*.tmp*"])})
    started = time.time()

    def landed(rel: str) -> None:
        nonlocal started
        size, mtime = todo[rel]
        os.utime(local_root / rel, (mtime, mtime))  # as listed: the next sync compares equal
        name = lands_as.get(rel, rel)
        if name != rel:
            os.replace(local_root / rel, local_root / name)
        kind = "the inference checkpoint, " if name != rel else ""
        result = owner.get(rel)
        if result is None:
            out.method_files.append(name)
            shown = name
        else:  # named within its run's results folder, as the run's sync line says
            shown = name.partition("/")[2]
            result.pulled.append(shown)
            result.nbytes += size
        echo(f"pulled {shown} ({kind}{format_bytes(size)}, {time.time() - started:.1f} s)")
        started = time.time()

    if todo:
        for folder in sorted({(local_root / rel).parent for rel in todo}):
            ensure_dir(folder)  # private, as the rest of the workspace's data
        session.conn.fetch_files(remote_root, local_root, sorted(todo), on_file=landed)
    for result in out.runs:
        result.synced_folds = sorted(f for f in done[result.status.run]
                                     if (result.model_dir / f"fold_{f}" / FINAL).is_file())
        if result.pulled:
            tid = session.registry.start_transfer(result.status.run.id, "pull",
                                                  result.remote_dir, str(result.model_dir))
            session.registry.finish_transfer(tid, ok=True, files=len(result.pulled),
                                             nbytes=result.nbytes)
    answer, record = local_root / INFORMATION, local_root / CHOICE
    if answer.is_file() and (not record.is_file()
                             or record.stat().st_mtime < answer.stat().st_mtime):
        _record_choice(session, out)
    return out


def _record_choice(session: Session, out: ExperimentSync) -> None:
    """hpcnn's record of the answer a find_best job wrote and this sync pulled, so that
    ``predict``, ``status`` and ``export`` use it as after a local ``hpcnn find-best``."""
    from hpcnn.nnunet.choice import read_answer, write_choice
    from hpcnn.services.method import experiment_of

    configurations, folds = experiment_of(session, [(r.status.run, r.status.row)
                                                    for r in out.runs])
    first = out.runs[0].status.run
    try:  # an answer among other configurations (another experiment's) is not this one's
        answer = out.results / INFORMATION
        if answer.stat().st_size > MAX_JSON_BYTES:
            raise ValueError("too large")
        best = json.loads(answer.read_text(encoding="utf-8"))["best_model_or_ensemble"]
        members = {m["configuration"] for m in best["selected_model_or_models"]}
    except (OSError, ValueError, KeyError, TypeError):
        members = set()
    if not members or not members <= set(configurations):
        return
    try:
        choice = read_answer(Trained(out.results, first.trainer, first.plans,
                                     tuple(configurations), tuple(folds)))
    except (HpcnnError, OSError, ValueError, KeyError, TypeError) as exc:
        out.choice_problem = (f"find-best's answer in {out.results / INFORMATION} could not be "
                              f"read ({type(exc).__name__}: {exc}); sync every configuration "
                              "(leave -c out) or run `hpcnn find-best` here")
        return
    write_choice(out.results, choice)
    out.choice = choice


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


def all_synced(result: ExperimentSync) -> bool:
    return result.exit_code == EXIT_OK and all(
        len(r.synced_folds) == len(r.status.folds) for r in result.runs)

