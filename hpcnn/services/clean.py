"""``hpcnn clean``: frees the cluster of hpcnn's copies of a run's inputs once the run is done
with them, after the user has seen what goes and how big it is.

What may go, only under the run's resolved absolute remote_dir:

- the dataset copy the run's pushes recorded (``nnUNet_preprocessed/DatasetX`` or
  ``nnUNet_raw/DatasetX``), and for a run preprocessed on the cluster the preprocessed folder its
  preprocessing job wrote. Kept while another run of the same dataset still has jobs queued or
  running: they read that same copy.
- with ``include_results``: the run's ``fold_N`` folders in ``nnUNet_results``. A fold whose
  final checkpoint is not here with the size it has there (``hpcnn sync`` never pulled it) is
  set apart, removed only when the user confirms its loss as well; the run's job folder
  (``.hpcnn/runs/<run>``: logs and markers that ``status`` and ``logs`` read) goes with the last
  fold.
- the folders ``.hpcnn/predict/<id>`` of the run's prediction jobs (``predict --on-cluster``)
  whose job ended (completed, failed, cancelled, timed out, lost) but nobody came back to
  (``--attach``) to bring the results home and remove them: patient images. Known from this
  workspace's records (``.hpcnn/predict/<id>.json``) and the registry's prediction jobs. The
  staged images go like the dataset copy: they are inputs, the job is done with them. The
  results of a COMPLETED job never brought back are results, treated as a fold never synced:
  kept without ``include_results``, and with it removed only when the user confirms their loss
  (kept under ``--yes``), so ``--attach`` can still fetch them; once removed, the record says
  ``cleaned`` and ``--attach`` says so. A prediction whose job is queued or running (or whose
  end the scheduler did not tell) is kept whole, and so are the fold results it reads and the
  run's job folder its logs go to.

Never: hpcnn's job files (``.hpcnn/lib``: every run uses them), anything while one of the run's
training or preprocessing jobs is queued or running (a prediction job does not read the
dataset copy and blocks nothing else: see above), any path that is not strictly inside
remote_dir. One remote command lists (with ``du``), one removes (``rm -rf`` of quoted absolute
paths: a missing path is no error, so cleaning twice is fine). With the local scheduler the jobs
read the workspace itself: there is no copy, and nothing is removed.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass, field

from hpcnn.errors import ConfigError, JobsActive, SchedulerUnavailable
from hpcnn.jobs import engine
from hpcnn.jobs.model import FOLD, PREDICT, PREP, Run
from hpcnn.nnunet.launcher import FINAL, INFERENCE
from hpcnn.schedulers.base import JobState
from hpcnn.services.predict import (
    Request,
    mark_cleaned,
    prediction_id,
    recorded_predictions,
)
from hpcnn.services.session import Session
from hpcnn.state import JobRow
from hpcnn.workspace import PREPROCESSED, RAW, RESULTS, RemoteLayout

CLEANED = "clean"
"""The registry's transfer direction for a removal: source the removed path, destination the
host. Pushes never read the table (rsync compares the files), so the next push copies all
again by itself; the row tells when and how much was removed."""
_TAG = "hpcnn-clean"


@dataclass(frozen=True)
class Item:
    """One folder clean may remove, relative to remote_dir."""

    rel: str
    what: str
    fold: int | None = None
    prediction: str | None = None
    """The prediction whose folder (or staged images, ``.../input``) this is."""


@dataclass(frozen=True)
class Found:
    """An item that is there: its absolute path and its size (``du -sk``)."""

    item: Item
    path: str
    nbytes: int


@dataclass(frozen=True)
class Kept:
    rel: str
    why: str
    nbytes: int | None = None


@dataclass
class CleanPlan:
    run: Run
    where: str
    root: str | None = None
    remove: list[Found] = field(default_factory=list)
    unsynced: list[Found] = field(default_factory=list)
    """Results of folds never synced here and of prediction jobs never brought back: removed
    only when the user confirms their loss."""
    job_folder: Found | None = None
    """Goes with the results of every fold (its logs are the run's record until then)."""
    kept: list[Kept] = field(default_factory=list)
    local: bool = False

    def targets(self, *, unsynced: bool = False) -> list[Found]:
        """What goes: the unsynced folds (and then the job folder) only when confirmed."""
        chosen = self.remove + (self.unsynced if unsynced else [])
        if self.job_folder is not None and (unsynced or not self.unsynced):
            chosen.append(self.job_folder)
        return chosen


def checked(root: str, path: str) -> str:
    """``path`` when it lies strictly inside the absolute remote_dir ``root``. Refuses an empty
    path, ``/``, a relative or unnormalised one (``..``), and anything outside remote_dir, so that
    no name read from the registry or the cluster can make ``rm -rf`` reach further."""
    if not root or root != posixpath.normpath(root) or not posixpath.isabs(root) \
            or not root.strip("/"):
        raise ConfigError(f"refusing to remove anything: the remote_dir {root!r} is not an "
                          "absolute folder other than /",
                          hint="set cluster.remote_dir to a folder of hpcnn's own, e.g. hpcnn "
                               "(under your cluster home)")
    if not path or path != posixpath.normpath(path) or not path.startswith(root + "/"):
        raise ConfigError(f"refusing to remove {path!r}: not a folder inside the remote_dir "
                          f"{root}", hint="report this: hpcnn built a path outside its folder")
    return path


def _live(row: JobRow) -> bool:
    return bool(row.scheduler_id) and not JobState(row.state).finished


def _reads_inputs(row: JobRow) -> bool:
    """A live job that reads the dataset copy: a prediction job reads only the model (its own
    folder and the fold results are kept for it instead, see ``_plan_predictions``)."""
    return _live(row) and row.kind != PREDICT


def _busy_runs(session: Session, run: Run) -> list[str]:
    """Refuse while one of the run's jobs is queued or running; return the other runs of the
    same dataset on this cluster that still have such jobs (they read the same copy). One status
    poll through the engine for them all, none when the registry shows no live job."""
    registry = session.registry
    others = [r.id for r in registry.runs()
              if r.id != run.id and r.dataset == run.dataset and r.host in ("", session.host)]
    rows = [j for rid in (run.id, *others) for j in registry.jobs(rid)]
    answered = True
    if any(_live(j) for j in rows):
        rows, _, answered, _ = engine.refresh(registry, session.conn, session.dialect, rows,
                                              grace=session.cfg.status.lost_grace)
    mine = [j for j in rows if j.run == run.id and _reads_inputs(j)]
    if mine:
        names = ", ".join(f"{j.name} ({j.state}, job {j.scheduler_id})" for j in mine)
        if not answered:
            raise SchedulerUnavailable(
                f"the scheduler did not answer: cannot tell whether these jobs of run {run.id} "
                f"still run: {names}", hint="clean again when the scheduler answers "
                                            "(`hpcnn status` shows it)")
        raise JobsActive(
            f"run {run.id} still has jobs queued or running: {names}; cleaning now would remove "
            "what they read", hint=f"wait for them (`hpcnn status --run {run.id}`), or cancel "
                                   f"them with `hpcnn cancel --run {run.id}`, then clean again")
    return sorted({j.run for j in rows if j.run != run.id and _reads_inputs(j)})


def _listing(session: Session, items: list[Item],
             finals: list[str]) -> tuple[str | None, list[int | None], list[int | None]]:
    """One remote command: the absolute remote_dir (None: it does not exist), each item's size
    in bytes (None: not there) and each ``finals`` file's exact size."""
    parts = [f"cd -- {shlex.quote(session.remote.root)} 2>/dev/null || exit 0",
             f'printf "{_TAG} root %s\\n" "$(pwd)"']
    for i, item in enumerate(items):
        parts.append(f"s=$(du -sk -- {shlex.quote(item.rel)} 2>/dev/null | tail -n 1 | cut -f 1)"
                     f'; echo "{_TAG} item {i} ${{s:--}}"')
    for i, rel in enumerate(finals):
        parts.append(f"c=$({{ wc -c < {shlex.quote(rel)}; }} 2>/dev/null)"
                     f'; echo "{_TAG} final {i} ${{c:--}}"')
    out = session.conn.run_shell("; ".join(parts)).stdout
    root: str | None = None
    sizes: list[int | None] = [None] * len(items)
    exact: list[int | None] = [None] * len(finals)
    for line in out.splitlines():
        tag, _, rest = line.partition(" ")
        key, _, value = rest.partition(" ")
        if tag != _TAG:
            continue
        if key == "root":
            root = value
            continue
        index, _, number = value.partition(" ")
        number = number.strip()
        if index.isdigit() and number.isdigit():
            if key == "item" and int(index) < len(items):
                sizes[int(index)] = int(number) * 1024
            elif key == "final" and int(index) < len(finals):
                exact[int(index)] = int(number)
    return root, sizes, exact


def plan_clean(session: Session, run_id: str | None = None, *,
               include_results: bool = False) -> CleanPlan:
    """What ``hpcnn clean`` would remove and what it keeps, and why (see the module doc)."""
    run, row = session.find_run(run_id)
    if session.is_local:
        return CleanPlan(run, "this machine", local=True)
    if row.host and row.host != session.host:
        raise ConfigError(f"run {run.id} ran on {row.host}, but cluster.yaml now points at "
                          f"{session.host}", hint="use the cluster.yaml of that cluster "
                                                  "(--config), or pass another --run")
    busy = _busy_runs(session, run)
    rows = session.registry.jobs(run.id)
    folds = sorted({r.fold for r in rows if r.kind == FOLD and r.fold is not None})
    rel = RemoteLayout("")
    inputs = [Item(rel.path(tree, run.dataset), "the dataset copy pushed for this run")
              for tree in (PREPROCESSED, RAW)]
    results = [Item(rel.path(RESULTS, run.results_folder, f"fold_{f}"), f"results of fold {f}",
                    f) for f in folds]
    jobs = Item(posixpath.join(rel.runs, run.id), "the run's job logs and markers")
    predictions = _predictions(session, run, rows)
    staged = [item for p in predictions for item in (
        Item(rel.predict_dir(p.id), f"prediction {p.id}", prediction=p.id),
        Item(posixpath.join(rel.predict_dir(p.id), "input"),
             f"images staged for prediction {p.id} (its job {p.state})", prediction=p.id))]
    items = [*inputs, *results, jobs, *staged]
    # A fold's local checkpoint_final.pth is its final checkpoint or, as sync brings it, the
    # launcher's inference checkpoint.
    root, sizes, exact = _listing(session, items,
                                  [posixpath.join(r.rel, name) for name in (FINAL, INFERENCE)
                                   for r in results])
    finals = list(zip(exact[:len(results)], exact[len(results):], strict=True))
    plan = CleanPlan(run, f"{session.host}:{root or session.remote.root}", root)
    if root is None:
        return plan
    found = {item.rel: Found(item, checked(root, posixpath.join(root, item.rel)), size)
             for item, size in zip(items, sizes, strict=True) if size is not None}
    _plan_inputs(session, plan, run, rows, [found.get(i.rel) for i in inputs], busy)
    readers = _plan_predictions(plan, predictions, [found.get(i.rel) for i in staged],
                                include_results=include_results)
    present = [(found[r.rel], final) for r, final in zip(results, finals, strict=True)
               if r.rel in found]
    if not include_results or readers:
        if present:
            numbers = ", ".join(str(f.item.fold) for f, _ in present)
            why = (f"prediction(s) {readers} read them" if include_results
                   else "kept without --include-results")
            plan.kept.append(Kept(rel.path(RESULTS, run.results_folder),
                                  f"results of folds {numbers}: {why}",
                                  sum(f.nbytes for f, _ in present)))
        if jobs.rel in found:
            why = (f": prediction(s) {readers} write their logs there" if include_results else
                   " (`hpcnn status` and `hpcnn logs` read them): removed with --include-results")
            plan.kept.append(Kept(jobs.rel, f"the run's job logs and markers{why}",
                                  found[jobs.rel].nbytes))
        return plan
    local = session.workspace.results / run.results_folder
    for f, remote_final in present:
        mine = local / f"fold_{f.item.fold}" / FINAL
        if remote_final[0] is None:  # a fold that did not finish: its checkpoints would go
            plan.unsynced.append(Found(Item(f.item.rel, f"{f.item.what} (not finished)",
                                            f.item.fold), f.path, f.nbytes))
        elif mine.is_file() and mine.stat().st_size in remote_final:
            plan.remove.append(f)
        else:
            plan.unsynced.append(f)
    plan.job_folder = found.get(jobs.rel)
    return plan


@dataclass(frozen=True)
class Prediction:
    """One of the run's prediction jobs: its state from the registry (refreshed by
    ``_busy_runs``; PENDING: never recorded as submitted) and its record's state here (None:
    no record in this workspace)."""

    id: str
    state: JobState
    record: str | None
    job_id: str = ""

    @property
    def fetched(self) -> bool:
        """Nothing left to bring back: ``--attach`` delivered the results or saw the failure."""
        return self.record not in (None, "submitted")


def _predictions(session: Session, run: Run, rows: list[JobRow]) -> list[Prediction]:
    """The run's prediction jobs from the registry's rows and this workspace's records: a job
    recorded in only one of them is still known."""
    records = recorded_predictions(session, run.id)
    by_row = {pid: r for r in rows if r.kind == PREDICT and (pid := prediction_id(r))}
    found = []
    for pid in sorted(records.keys() | by_row.keys()):
        request: Request | None = records.get(pid)
        row = by_row.get(pid)
        record = request.state if request else None
        if row is not None and (row.scheduler_id or JobState(row.state).finished):
            state = JobState(row.state)
        elif record in ("done", "failed"):  # the record outlived its registry row
            state = JobState.COMPLETED if record == "done" else JobState.FAILED
        else:  # no scheduler id recorded: only --attach can find the job again
            state = JobState.PENDING
        found.append(Prediction(pid, state, record, (row.scheduler_id or "") if row else ""))
    return found


def _plan_predictions(plan: CleanPlan, predictions: list[Prediction],
                      staged: list[Found | None], *, include_results: bool) -> str:
    """Sort the prediction folders that are there (``staged``: each prediction's folder, then
    its ``input``); return the ids of those whose job may still read the fold results."""
    readers = []
    for p, whole, images in zip(predictions, staged[::2], staged[1::2], strict=True):
        if whole is None:
            continue
        job = f"job {p.job_id}" if p.job_id else "its job"
        if not p.state.finished:
            readers.append(p.id)
            why = {JobState.UNKNOWN: "the scheduler did not say whether it still runs",
                   JobState.PENDING: f"its submission was never recorded (`hpcnn predict "
                                     f"--attach {p.id}` looks for the job)"}.get(
                                         p.state, "it reads these images")
            plan.kept.append(Kept(whole.item.rel, f"prediction {p.id}: {job} is {p.state}, {why};"
                                                  " clean again once it ended", whole.nbytes))
        elif p.fetched or p.state != JobState.COMPLETED:
            why = "results brought back" if p.record == "done" else "no results to bring back"
            plan.remove.append(Found(Item(whole.item.rel, f"{whole.item.what}, {job} "
                                          f"{p.state}: {why}", prediction=p.id),
                                     whole.path, whole.nbytes))
        else:
            if images is not None:
                plan.remove.append(images)
            fetch = (f"`hpcnn predict --attach {p.id}` first" if p.record is not None else
                     f"no record of it here (.hpcnn/predict/{p.id}.json)")
            results = Found(Item(whole.item.rel, f"prediction {p.id}: results never fetched: "
                                                 f"{fetch}", prediction=p.id),
                            whole.path, whole.nbytes - (images.nbytes if images else 0))
            if include_results:
                plan.unsynced.append(results)
            else:
                plan.kept.append(Kept(results.item.rel, f"{results.item.what}; kept without "
                                                        "--include-results", results.nbytes))
    return ", ".join(readers)


def _plan_inputs(session: Session, plan: CleanPlan, run: Run, rows: list[JobRow],
                 copies: list[Found | None], busy: list[str]) -> None:
    """The dataset copies this run's pushes recorded (under this remote_dir, spelt absolute or
    as cluster.yaml had it before it was anchored) or its preprocessing job wrote."""
    assert plan.root is not None
    pushed = {posixpath.normpath(t["destination"]) for t in session.registry.transfers(run.id)
              if t["direction"] == "push"}
    roots = {plan.root, session.remote.root, session.cfg.remote_dir}
    spellings: set[str] = set()
    for tree in (PREPROCESSED, RAW):
        names = {posixpath.normpath(posixpath.join(r, tree, run.dataset)) for r in roots}
        spellings |= names
        copy = copies[0 if tree == PREPROCESSED else 1]
        by_prep = tree == PREPROCESSED and any(r.kind == PREP for r in rows)
        if copy is None or not (names & pushed or by_prep):
            continue
        if busy:
            plan.kept.append(Kept(copy.item.rel, f"runs {', '.join(busy)} of the same dataset "
                                                 "still have jobs queued or running: they read "
                                                 "this copy", copy.nbytes))
        else:
            plan.remove.append(copy)
    for dest in sorted(pushed - spellings):
        if posixpath.basename(dest) == run.dataset:
            plan.kept.append(Kept(dest, f"pushed under another remote_dir; clean removes only "
                                        f"under {plan.root}"))


def apply_clean(session: Session, plan: CleanPlan, *, unsynced: bool = False) -> list[Found]:
    """Remove the plan's targets in ONE remote command (every path checked to lie inside
    remote_dir and quoted) and record each removal in the registry."""
    targets = plan.targets(unsynced=unsynced)
    if not targets:
        return []
    paths = [shlex.quote(checked(plan.root or "", t.path)) for t in targets]
    session.conn.run_shell(f"rm -rf -- {' '.join(paths)}")
    for t in targets:
        tid = session.registry.start_transfer(plan.run.id, CLEANED, t.path, session.host)
        session.registry.finish_transfer(tid, ok=True, files=0, nbytes=t.nbytes)
        if t.item.prediction and not t.item.rel.endswith("/input"):
            mark_cleaned(session, t.item.prediction)
    return targets
