"""``hpcnn predict --on-cluster``: a large batch predicted as one job where the folds already are
(and the GPUs), with the same inputs, names and formats as a prediction on this machine.

1. The run (``--run``, default the most recent) names the model; one remote command lists its
   results folder on the cluster: which folds have ``checkpoint_final.pth`` (the others are
   named), which of them the launcher's inference checkpoint too (the job loads those, half
   the bytes, when every chosen fold has one) and its ``dataset.json`` (channels, labels, file
   ending).
2. The inputs are checked and staged here by the local prediction's own code (nnunet/predict.py,
   inputs.py): every image under its nnU-Net name in one folder, converted where needed.
3. That folder goes to ``<remote_dir>/.hpcnn/predict/<id>/input`` (incremental, private) with
   hpcnn's job files; ONE job is rendered through the job templates like a fold job and
   submitted through the job engine (intent recorded before the scheduler call, id after).
4. The job is followed with the engine's poll, one remote command per interval; Ctrl-C or
   ``--no-follow`` leaves it running and ``hpcnn predict --attach ID`` comes back to it. What
   coming back needs (the cases, their result names, the model's dataset.json) is kept in
   ``.hpcnn/predict/<id>.json``.
5. Only nnU-Net's result files come back, into a work folder inside OUTPUT, and the local
   prediction's code renames or converts them to the inputs' names and the asked format. A job
   that failed shows its error tail and leaves OUTPUT untouched. Either way the images' copies on
   the cluster go (the job's logs stay in its job folder).

A job nobody came back to leaves its folder on the cluster; ``hpcnn clean`` finds it from the
records kept here and in the registry (services/clean.py) and marks a record whose results it
removed ``cleaned``, so that ``--attach`` says so instead of pulling a folder that is gone.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpcnn.errors import EXIT_FAILED, EXIT_OK, EXIT_RUNNING, ConfigError, DataError, HpcnnError
from hpcnn.formats.source import SourceItem
from hpcnn.fsutil import atomic_write_text, ensure_dir
from hpcnn.jobs import engine, transfer
from hpcnn.jobs.model import PREDICT, Run, job_name, predict_spec
from hpcnn.jobs.submit import reconcile, submit_spec
from hpcnn.nnunet.inputs import PredictCase, case_id, stage
from hpcnn.nnunet.launcher import INFERENCE
from hpcnn.nnunet.model_folder import (
    CHECKPOINT,
    MODEL_FILES,
    ListedModel,
    choose_folds,
    listed_model,
    read_dataset_json,
)
from hpcnn.nnunet.predict import check_request, deliver, result_folder
from hpcnn.schedulers.base import JobState
from hpcnn.services.session import Session
from hpcnn.services.status import hint_for
from hpcnn.services.train import anchor_remote_dir, check_versions
from hpcnn.state import JobRow
from hpcnn.workspace import HPCNN_DIR, RESULTS

Echo = Callable[[str], None]
PREDICTIONS = "predict"
"""Under the workspace's ``.hpcnn``: one ``<id>.json`` per prediction job (and, while it is
staged, ``<id>/input``)."""
PREDICTION_ID = re.compile(r"[0-9a-f]{8}")
"""Every id ``submit_prediction`` gives: an id read from a record or a job name is used in a
remote ``rm -rf`` only when it has this form (no ``/``, no ``..``)."""
CLEANED = "cleaned"
"""A record's state once ``hpcnn clean`` removed the job's folder before its results came back."""
_DATASET = "__HPCNN_DATASET_JSON__"
_ERR_LINES = 15


class PredictJobFailed(HpcnnError):
    """The prediction job ended without results (failed, lost, cancelled, out of walltime)."""

    exit_code = EXIT_FAILED


@dataclass
class Request:
    """A prediction job and everything needed to bring its results back, from any later
    process: saved as ``.hpcnn/predict/<id>.json``."""

    id: str
    run: str
    host: str
    job: str
    model: str
    """The model folder on the cluster."""
    dataset_json: dict[str, Any]
    folds: list[str]
    fast: bool
    fmt: str | None
    output: str
    cases: list[dict[str, Any]]
    """Per case: ``name``, ``images`` ([path, display] in channel order), ``result`` (its path)."""
    remote_dir: str
    """``<remote_dir>/.hpcnn/predict/<id>`` on the cluster: ``input`` and ``output``."""
    nnunetv2_version: str | None = None
    submitted_at: float = 0.0
    force: bool = False
    """``--force``: results that exist in OUTPUT are replaced when they come back."""
    state: str = "submitted"
    """``submitted``, then ``done`` (results delivered) or ``failed``; ``cleaned`` when ``hpcnn
    clean`` removed the job's folder on the cluster first (nothing left to bring back)."""

    @property
    def model_folder(self) -> ListedModel:
        return ListedModel(Path(self.model), self.dataset_json, {})

    def predict_cases(self) -> list[PredictCase]:
        return [PredictCase(c["name"], tuple(SourceItem(Path(p), d)
                                             for p, d in c["images"])) for c in self.cases]

    @property
    def results(self) -> list[Path]:
        return [Path(c["result"]) for c in self.cases]

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / f"{self.id}.json", json.dumps(asdict(self), indent=2) + "\n",
                          mode=0o600)


@dataclass
class ClusterPrediction:
    """Where a prediction job stands after this command: delivered, or still going."""

    request: Request
    row: JobRow
    state: JobState
    outputs: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The shared scheme: 0 the results are in OUTPUT, 10 the job is still queued or
        running (a failed job raises PredictJobFailed, 11)."""
        return EXIT_OK if self.request.state == "done" else EXIT_RUNNING

    @property
    def seconds(self) -> float:
        return time.time() - self.request.submitted_at


def predictions_dir(session: Session) -> Path:
    return session.workspace.state_dir / PREDICTIONS


def remote_model(session: Session, run: Run) -> ListedModel:
    """The run's model folder on the cluster, from one remote listing: its fold folders, which
    of them have a final checkpoint, and its dataset.json."""
    folder = session.remote.path(RESULTS, run.results_folder)
    files = " ".join(shlex.quote(f) for f in MODEL_FILES)
    res = session.conn.run_shell(
        f"cd {shlex.quote(folder)} 2>/dev/null || exit 44; "
        'for d in fold_*; do [ -d "$d" ] || continue; '
        f'if [ -f "$d"/{shlex.quote(INFERENCE)} ] && [ -f "$d"/{shlex.quote(CHECKPOINT)} ]; '
        'then echo "inference $d"; '
        f'elif [ -f "$d"/{shlex.quote(CHECKPOINT)} ]; then echo "final $d"; '
        'else echo "unfinished $d"; fi; done; '
        f'for f in {files}; do [ -f "$f" ] || echo "missing $f"; done; '
        f"echo {_DATASET}; cat dataset.json 2>/dev/null; true", check=False)
    where = f"{session.conn.description}:{folder}"
    if res.returncode == 44:
        raise DataError(f"{where}: no results of run {run.id} where jobs run",
                        hint="train it first (`hpcnn train-all-folds`); `hpcnn status` shows "
                             "where its folds stand")
    if not res.ok:
        raise HpcnnError(f"cannot list {where}: {res.stderr.strip() or res.returncode}")
    listing, _, dataset_text = res.stdout.partition(f"{_DATASET}\n")
    folds: dict[str, bool] = {}
    inference: set[str] = set()
    for line in listing.splitlines():
        kind, _, name = line.partition(" ")
        if kind == "missing":
            raise DataError(f"{where}/{name}: missing; nnU-Net's predictor needs it",
                            hint="train the run again with `hpcnn train-all-folds` (it writes "
                                 "the model folder's files)")
        if kind in ("inference", "final", "unfinished"):
            folds[name] = kind != "unfinished"
        if kind == "inference":
            inference.add(name)
    dataset_json = read_dataset_json(dataset_text, f"{where}/dataset.json",
                                     hint="train the run again with `hpcnn train-all-folds`")
    return listed_model(folder, dataset_json, folds, inference)


def submit_prediction(session: Session, inputs: Sequence[str], output: Path, *,
                      run_id: str | None = None, folds: Sequence[str] | None = None,
                      device: str = "auto", fast: bool = False, fmt: str | None = None,
                      echo: Echo = print, force: bool = False,
                      max_gib: float | None = None) -> Request:
    """Steps 1-3: check everything, stage and push the images, submit the one job. Nothing is
    left on the cluster when a step before the submission fails."""
    run, _ = session.find_run(run_id)
    model = remote_model(session, run)
    chosen = choose_folds(model, folds)
    missing = model.describe_missing()
    echo(f"model {model.identifier} on {session.conn.description}: fold(s) {', '.join(chosen)}"
         + (f" ({missing})" if missing else ""))
    cases, results = check_request(model, inputs, output, fmt, echo, force=force,
                                   max_gib=max_gib)
    version = check_versions(session, None)
    anchor_remote_dir(session)
    layout = session.remote
    pid = uuid.uuid4().hex[:8]
    spec = predict_spec(session.cfg, layout, run, pid, chosen,
                        device=session.cfg.training.device if device == "auto" else device,
                        fast=fast, checkpoint=model.checkpoint_for(chosen))
    request = Request(
        id=pid, run=run.id, host=session.host, job=spec.name, model=str(model.path),
        dataset_json=model.dataset_json, folds=chosen, fast=fast, fmt=fmt,
        output=str(output.absolute()), remote_dir=layout.predict_dir(pid),
        cases=[{"name": c.name, "images": [[str(f.path.resolve()), f.display] for f in c.images],
                "result": str(r.absolute())} for c, r in zip(cases, results, strict=True)],
        nnunetv2_version=version, submitted_at=time.time(), force=force)
    local = ensure_dir(predictions_dir(session)) / pid
    remote_input = posixpath.join(request.remote_dir, "input")
    try:
        stage(cases, ensure_dir(local / "input"), model.file_ending, every_file=True)
        items = [*transfer.job_file_items(layout),
                 transfer.PushItem(f"{len(cases)} image(s) to predict", local / "input",
                                   remote_input)]
        transfer.push(session.conn, session.registry, layout, items, run=run.id, echo=echo)
        request.save(predictions_dir(session))
        submit_spec(session, session.cfg, spec, [], echo)
    except BaseException:
        (predictions_dir(session) / f"{pid}.json").unlink(missing_ok=True)
        _remove_remote(session, request)
        raise
    finally:
        if not (session.is_local and _same_folder(local, request.remote_dir)):
            shutil.rmtree(local, ignore_errors=True)
    return request


def load_request(session: Session, pid: str) -> Request:
    """``--attach ID``: a prediction of this workspace (an id or a unique prefix)."""
    folder = predictions_dir(session)
    known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    matches = [k for k in known if k == pid] or [k for k in known if k.startswith(pid)]
    if len(matches) != 1:
        what = "matches several prediction jobs" if matches else "is no prediction job"
        raise ConfigError(f"--attach {pid!r} {what} of this workspace (known: "
                          f"{', '.join(known) or 'none'})",
                          hint="pass the id `hpcnn predict --on-cluster` printed")
    request = _read(folder / f"{matches[0]}.json")
    if request.host != session.host:
        raise ConfigError(f"prediction {request.id} runs on {request.host}, but this "
                          f"configuration's cluster is {session.host}",
                          hint="use the cluster.yaml it was submitted with (--config)")
    if request.state == CLEANED:
        row = session.registry.get(request.job)
        ended = f" (job {row.scheduler_id} {row.state})" if row and row.scheduler_id else ""
        raise HpcnnError(f"prediction {request.id}{ended}: `hpcnn clean` removed its images and "
                         f"results from {request.host} before they were brought back; nothing "
                         f"was written to {request.output}",
                         hint="run the same `hpcnn predict --on-cluster` again to predict "
                              "those images")
    return request


def _read(path: Path) -> Request:
    try:
        return Request(**json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from exc


def recorded_predictions(session: Session, run_id: str) -> dict[str, Request]:
    """This workspace's records of the prediction jobs of run ``run_id`` on this cluster, by id
    (an unreadable record is left out: ``--attach`` names it)."""
    folder = predictions_dir(session)
    found: dict[str, Request] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            request = _read(path)
        except ConfigError:
            continue
        if request.run == run_id and request.host == session.host \
                and PREDICTION_ID.fullmatch(request.id):
            found[request.id] = request
    return found


def prediction_id(row: JobRow) -> str | None:
    """The prediction a registry row's job belongs to (None: not a prediction job)."""
    prefix = job_name(row.run, None, kind=f"{PREDICT}-")
    pid = row.name[len(prefix):] if row.name.startswith(prefix) else ""
    return pid if PREDICTION_ID.fullmatch(pid) else None


def mark_cleaned(session: Session, pid: str) -> None:
    """After ``hpcnn clean`` removed the folder of a prediction whose results never came back:
    ``--attach`` then says so instead of pulling a folder that is gone."""
    path = predictions_dir(session) / f"{pid}.json"
    if not path.is_file():
        return
    request = _read(path)
    if request.state == "submitted":
        request.state = CLEANED
        request.save(predictions_dir(session))


def follow(session: Session, request: Request, *, interval: float = 15.0, once: bool = False,
           echo: Echo = print) -> ClusterPrediction:
    """Steps 4-5: poll the job (a line whenever its state or progress changes) until it ends,
    or once with ``once``; then bring its results back. PredictJobFailed when it ended without
    them."""
    row = _submitted_row(session, request)
    if request.state == "done":
        echo(f"prediction {request.id} was already brought back into {request.output}")
        return ClusterPrediction(request, row, JobState(row.state), request.results)
    count = (f"find {shlex.quote(posixpath.join(request.remote_dir, 'output'))} -maxdepth 1 "
             f"-name {shlex.quote('case_*' + request.dataset_json['file_ending'])} 2>/dev/null "
             "| wc -l")
    said = ""
    while True:
        rows, observed, answered, extras = engine.refresh(
            session.registry, session.conn, session.dialect, [row],
            grace=session.cfg.status.lost_grace, extra=[count])
        row = rows[0]
        state = JobState(row.state)
        obs = observed.get(row.name)
        line = _progress(row, state, obs.markers.started.get("host", "") if obs else "",
                         extras[0].strip(), len(request.cases), answered)
        if line != said:
            echo(line)
            said = line
        if state.finished or once:
            break
        time.sleep(interval)
    if state == JobState.COMPLETED:
        return ClusterPrediction(request, row, state, bring_back(session, request, echo))
    if state.finished:
        raise _failure(session, request, row)
    return ClusterPrediction(request, row, state)


def bring_back(session: Session, request: Request, echo: Echo = print) -> list[Path]:
    """Pull only nnU-Net's result files into a work folder inside OUTPUT and deliver them under
    the inputs' names, as a local prediction does; then remove the images' remote copies."""
    output = Path(request.output)
    remote_out = posixpath.join(request.remote_dir, "output")
    cases = request.predict_cases()
    with result_folder(output) as work:
        tid = session.registry.start_transfer(request.run, "pull", remote_out,
                                              str(work / "output"))
        ok = False
        try:
            # nnU-Net's own dataset.json, plans.json and argument record stay behind.
            session.conn.pull_tree(remote_out, work / "output", exclude=("*.json",))
            ok = True
        finally:
            pulled = [p for p in (work / "output").rglob("*") if p.is_file()]
            session.registry.finish_transfer(tid, ok=ok, files=len(pulled),
                                             nbytes=sum(p.stat().st_size for p in pulled))
        produced = [work / "output" / case_id(i) for i in range(len(cases))]
        deliver(output, request.model_folder, request.folds, request.fast, cases, produced,
                request.results, request.fmt, echo,
                source={"model": f"{request.host}:{request.model}",
                        "nnunetv2_version": request.nnunetv2_version, "job": request.job},
                force=request.force)
    request.state = "done"
    request.save(predictions_dir(session))
    _remove_remote(session, request)
    return request.results


def _submitted_row(session: Session, request: Request) -> JobRow:
    """The job's registry row; a submission hpcnn did not live to record is found again from
    its job folder (as train-all-folds does), else the job never reached the scheduler."""
    row = session.registry.get(request.job)
    if row is not None and not row.scheduler_id:
        row = next(iter(reconcile(session, [row], echo=lambda _: None)), None)
    if row is None or not row.scheduler_id:
        raise HpcnnError(f"prediction {request.id} was never submitted (hpcnn stopped before "
                         "the scheduler took it)",
                         hint="run the same `hpcnn predict --on-cluster` again")
    return row


def _progress(row: JobRow, state: JobState, host: str, written: str, total: int,
              answered: bool) -> str:
    line = f"job {row.scheduler_id}: {state}"
    if state == JobState.RUNNING:
        line += (f" on {host}" if host else "") + (
            f", {written}/{total} result(s) written" if written.isdigit() else "")
    elif not answered and not state.finished:
        line += " (the scheduler did not answer)"
    return line


def _failure(session: Session, request: Request, row: JobRow) -> PredictJobFailed:
    """The job's end, its error tail and a fix; the images' remote copies go, OUTPUT is left
    as it was."""
    state = JobState(row.state)
    tail = engine.read_log(session.conn, row.job_dir, "err", tail=_ERR_LINES).rstrip()
    if request.state != "failed":
        request.state = "failed"
        request.save(predictions_dir(session))
        _remove_remote(session, request)
    code = f" (exit {row.exit_code})" if row.exit_code not in (None, 0) else ""
    lines = [f"prediction job {row.scheduler_id} ({row.name}) {state}{code}"
             + (f": {row.detail}" if row.detail else "") + f"; nothing was written to "
             f"{request.output}"]
    lines += [f"    | {line}" for line in tail.splitlines()]
    # The log's own hints only: the state's hints (resubmit, max_resubmits) are for folds.
    hint = hint_for(JobState.FAILED, f"{row.detail}\n{tail}") or (
        "the job ran out of time: raise resources.walltime in cluster.yaml, or predict fewer "
        "images per job" if state == JobState.TIMEOUT else
        f"the job's whole output is in {row.job_dir} (out.log, err.log) on "
        f"{session.conn.description}; fix the cause, then run the same `hpcnn predict "
        "--on-cluster` again")
    return PredictJobFailed("\n".join(lines), hint=hint)


def _remove_remote(session: Session, request: Request) -> None:
    """The images' copies where the job ran (patient data): removed once they are of no use."""
    own = posixpath.join(HPCNN_DIR, "predict", request.id)
    if PREDICTION_ID.fullmatch(request.id) and request.remote_dir.endswith("/" + own):
        # never anything but a prediction's own folder, whatever its record was made to say
        session.conn.run_shell(f"rm -rf -- {shlex.quote(request.remote_dir)}", check=False)


def _same_folder(local: Path, remote: str) -> bool:
    """Whether the staged folder is the job's own (the local scheduler, jobs in the workspace)."""
    return Path(remote).is_absolute() and Path(remote).resolve() == local.resolve()
