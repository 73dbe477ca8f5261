"""``hpcnn predict``: nnU-Net's own predictor on images as the user has them, results under the
images' own names.

The steps, each before the next writes anything:

1. the model folder: its finished folds (``checkpoint_final.pth``; the others are named), each
   through the weights-only check (checkpoint.py) before nnU-Net unpickles it, and a
   warning when the nnunetv2 that trained a fold (its ``hpcnn_provenance.json``) is not this one;
2. the inputs (inputs.py): cases, channels in the model's order, every file's header checked, and
   every result name known and free of clashes with other results and with the inputs;
3. the device (``auto``: CUDA, else Apple's MPS, else the CPU, where the cost in network passes is
   said and ``--fast`` offered);
4. a work folder inside OUTPUT holding converted images (those not in the model's format; the
   others are read where they are) and nnU-Net's results; ``nnUNetPredictor`` runs on the file
   lists with ``nnUNet_extTrainer`` pointing at hpcnn's trainers (the checkpoint names its
   trainer class, which nnU-Net looks up);
5. each result is renamed (same format) or converted (another format, or a Slicer ``.seg.nrrd``
   with the model's class names and colours) into OUTPUT under its final name, through a
   temporary name, so a reader never sees half a file; the work folder goes in every case.

``hpcnn_predict.json`` in OUTPUT records the model, folds, labels and which result came from which
images (``hpcnn evaluate`` reads the labels from it); ``hpcnn_predict.log`` keeps nnU-Net's own
output (its per-process chatter, per-fold progress bars, library warnings), which the user sees
only with ``verbose``; the user sees hpcnn's lines and one progress bar over cases x folds.
A result, the record or the log that exists already is refused before anything runs, unless
``force``. Everything written is private (folders 0700, files 0600), as the datasets are.

Steps 2 and 5 (``check_request``, ``result_folder``, ``deliver``) are also those of ``hpcnn
predict --on-cluster`` (services/predict.py), where nnU-Net runs as a job on the cluster: the
same inputs are taken and the results get the same names and formats.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from hpcnn import formats
from hpcnn.dataset.findings import shorten
from hpcnn.errors import DataError, HpcnnError
from hpcnn.formats.source import SourceItem
from hpcnn.fsutil import atomic_write_text, ensure_dir
from hpcnn.nnunet.checkpoint import check_folds
from hpcnn.nnunet.inputs import (
    PredictCase,
    case_id,
    check_images,
    check_output_folder,
    check_outputs,
    collect,
    refuse_existing,
    stage,
)
from hpcnn.nnunet.launcher import EXT_TRAINER
from hpcnn.nnunet.model_folder import (
    CHECKPOINT,
    ModelFolder,
    choose_folds,
    local_nnunetv2_version,
    open_model,
)

DICOM_FORMATS = tuple(f.prediction_choice for f in formats.all_formats()
                      if f.dicom and f.prediction_choice)
"""Formats written as a DICOM object derived from the case's source series (formats/)."""
RECORD = "hpcnn_predict.json"
LOG = "hpcnn_predict.log"
PREDICT_COPIES = 8
"""How many times an image's voxel bytes predicting it may take: nnU-Net holds it as float32
(up to 4x a file of 8-bit voxels), its resampled copy and a logit map per class, in the main
process and a preprocessing and an export worker. A file declaring more than the available
memory divided by this is refused before a worker tries to allocate it (``--max-gib`` raises
the bound)."""
_LOG_TAIL = 25
DEVICES = ("auto", "cuda", "mps", "cpu")
_WORK_PREFIX = ".hpcnn-predict-"
# Distinct, readable on dark and light backgrounds; Slicer picks its own when a file has none.
PALETTE = ((0.5, 0.68, 0.5), (0.94, 0.84, 0.57), (0.69, 0.48, 0.4), (0.85, 0.4, 0.35),
           (0.44, 0.5, 0.87), (0.56, 0.8, 0.9), (0.9, 0.6, 0.85), (0.7, 0.7, 0.7))

Echo = Callable[[str], None]


@dataclass
class Prediction:
    """What ``predict`` did: one result per case, in input order."""

    outputs: list[Path]
    folds: list[str]
    device: str
    seconds: float


def predict(
    model_dir: Path,
    inputs: Sequence[str],
    output: Path,
    folds: Sequence[str] | None = None,
    device: str = "auto",
    fast: bool = False,
    fmt: str | None = None,
    echo: Echo = print,
    *,
    force: bool = False,
    max_gib: float | None = None,
    verbose: bool = False,
    labels_file: Path | None = None,
) -> Prediction:
    """Predict every case in ``inputs`` into ``output`` with the model's finished folds (or
    ``folds``); ``fmt`` is a key of ``formats.prediction_choices()`` (default: each input's own
    format); ``echo`` gets the lines a user should read (warnings start with ``warning:``).
    ``force`` replaces existing results; ``max_gib`` bounds an image's voxel data
    (max_image_bytes); ``verbose`` shows nnU-Net's own output instead of keeping it in the log;
    ``labels_file``: a labels.yaml whose classes' ``code`` the DICOM formats write."""
    start = time.perf_counter()
    model = open_model(model_dir)
    chosen = choose_folds(model, folds)
    check_folds(model, chosen)  # nnU-Net's loader would run a pickle's code: refused first
    missing = model.describe_missing()
    echo(f"model {model.identifier}: fold(s) {', '.join(chosen)}"
         + (f" ({missing})" if missing else ""))
    for line in version_warnings(model, chosen):
        echo(f"warning: {line}")
    codes = dicom_codes(fmt, labels_file)
    cases, results = check_request(model, inputs, output, fmt, echo, force=force,
                                   max_gib=max_gib, records=(RECORD, LOG))
    torch_device = resolve_device(device)
    if torch_device == "cpu":
        echo(cpu_cost(model, cases, len(chosen), fast))

    with result_folder(output) as work:
        lists = stage(cases, work / "input", model.file_ending)
        produced = [work / "output" / case_id(i) for i in range(len(cases))]
        with nnunet_output(work / LOG, verbose) as shown:
            _run_predictor(model, chosen, torch_device, fast, lists, produced, shown, verbose)
        deliver(output, model, chosen, fast, cases, produced, results, fmt, echo, force=force,
                codes=codes)
        if not verbose:
            os.replace(work / LOG, output / LOG)
    return Prediction(results, chosen, torch_device, time.perf_counter() - start)


def check_request(model: ModelFolder, inputs: Sequence[str], output: Path, fmt: str | None,
                  echo: Echo, *, force: bool = False, max_gib: float | None = None,
                  records: Sequence[str] = (RECORD,)) -> tuple[list[PredictCase], list[Path]]:
    """The cases in ``inputs`` and the path of each one's result, every file checked against
    the model before anything is written: step 2, shared by a prediction here and one run as a
    job on the cluster, so both take the same inputs (with ``dataset import``'s payload, size
    and finite-value checks) and name the results the same. Results and ``records`` that exist
    in ``output`` are refused unless ``force``."""
    extension = _extension(fmt)
    check_output_folder(output, inputs)
    cases, findings = collect(inputs, model.channel_names, exclude=output)
    for finding in findings:
        echo(f"{finding.level}: {finding.line()}")
    if fmt in DICOM_FORMATS:
        _check_dicom_sources(cases, fmt)
    check_images(cases, model.channel_names, max_bytes=max_image_bytes(max_gib))
    return cases, check_outputs(cases, extension, output, force=force, records=records)


def source_series(case: PredictCase) -> Path | None:
    """The DICOM series folder ``case`` was read from, which a DICOM result references (None:
    the case is an image file). The input side makes a series folder a case's first image."""
    path = case.images[0].path
    return path if path.is_dir() else None


def _check_dicom_sources(cases: Sequence[PredictCase], fmt: str) -> None:
    """A DICOM result needs the libraries and, for every case, its source series."""
    from hpcnn.formats.dicom_derived import require_dicom

    require_dicom("highdicom" if fmt == "dicom-seg" else "pydicomrt.rs", "pydicom")
    files = [c.images[0].display for c in cases if source_series(c) is None]
    if files:
        raise DataError(f"--format {fmt} writes a DICOM object that references the source "
                        f"DICOM series (patient, study, frame of reference, slices); "
                        f"{shorten(files)} {'is not a' if len(files) == 1 else 'are not'} "
                        "DICOM series", hint="predict the DICOM series folders themselves, or "
                                             "choose --format nii.gz, nrrd or seg.nrrd")
    enhanced = [c.images[0].display for c in cases
                if source_series(c) is not None and len(c.images[0].files) == 1]
    if enhanced:  # a classic series has two slices at least (dicom_series.problems)
        raise DataError(f"--format {fmt}: {shorten(enhanced)} "
                        f"{'is an' if len(enhanced) == 1 else 'are'} enhanced multi-frame "
                        "image(s); hpcnn writes DICOM results for series of single-frame images "
                        "only", hint="choose --format nii.gz, nrrd or seg.nrrd for them")


def dicom_codes(fmt: str | None, labels_file: Path | None) -> dict[str, Any]:
    """The coded concepts of labels.yaml's classes for a DICOM format (read before anything
    runs, so a bad code stops the prediction at once); empty otherwise."""
    if labels_file is None or fmt not in DICOM_FORMATS:
        return {}
    from hpcnn.formats.dicom_derived import read_codes

    return read_codes(labels_file)


def max_image_bytes(max_gib: float | None) -> int | None:
    """The most voxel data one image may declare: ``max_gib``, else the available memory over
    PREDICT_COPIES (None: unknown, no bound)."""
    from hpcnn.dataset.workers import available_memory

    if max_gib is not None:
        return int(max_gib * 2**30)
    memory = available_memory()
    return memory // PREDICT_COPIES if memory else None


@contextmanager
def result_folder(output: Path) -> Iterator[Path]:
    """A work folder inside ``output`` (on the same file system, so results are renamed into
    place, never copied half-way). It goes in every case; ``output`` goes too when this
    prediction created it and failed, so a failure leaves no folder of partial results."""
    created = not output.exists()
    work = output / f"{_WORK_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        ensure_dir(output)  # private when created here; a folder the user made keeps its mode
        work.mkdir(mode=0o700)
        yield work
    except BaseException:
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def deliver(output: Path, model: ModelFolder, folds: Sequence[str], fast: bool,
            cases: Sequence[PredictCase], produced: Sequence[Path], results: Sequence[Path],
            fmt: str | None, echo: Echo, *, source: Mapping[str, object] | None = None,
            force: bool = False, codes: Mapping[str, Any] | None = None) -> None:
    """Step 5: nnU-Net's results (``produced``, named ``case_NNNN`` without the file ending)
    renamed or converted to their final names and format, then ``hpcnn_predict.json``. Every
    result is checked first, so a missing one leaves the earlier ones unplaced, and so is
    every final name again (without ``force``): a file that appeared there while nnU-Net ran
    is not replaced either. ``source`` replaces what the record says of the model (a model on
    the cluster, a method); ``codes``: the classes' coded concepts for a DICOM format."""
    made = [Path(f"{p}{model.file_ending}") for p in produced]
    missing = [final.name for m, final in zip(made, results, strict=True) if not m.is_file()]
    if missing:
        raise DataError(f"nnU-Net wrote no result for {shorten(missing)}",
                        hint="run it again with --verbose to see nnU-Net's whole output (on "
                             "the cluster: the job's err.log)")
    if not force:
        refuse_existing(results, output)
    for case, result, final in zip(cases, made, results, strict=True):
        if fmt in DICOM_FORMATS:
            _place_dicom(result, final, model, folds, case, fmt, source or {}, codes or {},
                         force=force)
        else:
            _place(result, final, model,
                   fmt is not None and formats.by_prediction_choice(fmt).name == "slicer-seg")
        echo(f"{case.images[0].display} -> {final}")
    _write_record(output, model, folds, fast, cases, results, source or {})


def version_warnings(model: ModelFolder, folds: Sequence[str]) -> list[str]:
    """One line per nnunetv2 version that trained some of ``folds`` and is not the local one."""
    local = local_nnunetv2_version()
    by_version: dict[str, list[str]] = {}
    for fold, version in model.trained_with(folds).items():
        if version != local:
            by_version.setdefault(version, []).append(fold)
    return [f"fold(s) {', '.join(fs)} were trained with nnunetv2 {v}, this machine has "
            f"{local or 'none'}: predictions may differ or fail to load; install nnunetv2=={v} "
            "here to be sure" for v, fs in sorted(by_version.items())]


def resolve_device(device: str) -> str:
    """``auto``: CUDA, else MPS, else CPU; a device asked for but missing is a usage error."""
    import torch

    if device not in DEVICES:
        raise DataError(f"--device {device}: use one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (device == "cuda" and not cuda) or (device == "mps" and not mps):
        raise DataError(f"--device {device}: this PyTorch sees no {device.upper()} device",
                        hint="use --device auto (picks what is there) or --device cpu")
    return device


def cpu_cost(model: ModelFolder, cases: Sequence[PredictCase], n_folds: int,
             fast: bool) -> str:
    """What predicting on the CPU will take, in network passes (the part that dominates):
    sliding-window tiles of the model's patch over each image at the model's spacing, times
    folds, times 2^axes mirrorings with test-time augmentation."""
    config = _configuration(model)
    patch = config.get("patch_size") or []
    spacing = config.get("spacing") or []
    tiles = 0
    for case in cases:
        # nnU-Net transposes axes per plans; the tile count is what matters, so sort both.
        extent = sorted(_extent_mm(case.images[0]))
        tiles += _tiles(extent, sorted(spacing), sorted(patch))
    mirror = 1 if fast else 2 ** len(patch or (0, 0, 0))
    passes = tiles * n_folds * mirror
    text = (f"predicting on the CPU: {passes} network passes ({tiles} tile(s) in "
            f"{len(cases)} case(s) x {n_folds} fold(s)"
            + (")" if fast else f" x {mirror} mirrorings for test-time augmentation)"))
    if not fast:
        text += f"; --fast skips the mirrorings ({mirror}x fewer passes, slightly less accurate)"
    return text


def _extent_mm(item: SourceItem) -> list[float]:
    """An image's extent in mm along its axes, from its header: a file's, or for a DICOM
    series its first and last slices' (the slice count times their distance apart)."""
    import SimpleITK as sitk

    def header(path: Path) -> Any:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader

    first = header(item.files[0] if item.is_series else item.path)
    extent = [n * s for n, s in zip(first.GetSize(), first.GetSpacing(), strict=True)]
    if item.is_series and len(item.files) > 1:
        last = header(item.files[-1])
        apart = math.dist(first.GetOrigin(), last.GetOrigin()) / (len(item.files) - 1)
        extent[2] = len(item.files) * apart
    return extent


def _tiles(extent: Sequence[float], spacing: Sequence[float], patch: Sequence[int]) -> int:
    if not (len(extent) == len(spacing) == len(patch)) or not patch:
        return 1
    count = 1
    for mm, sp, p in zip(extent, spacing, patch, strict=True):
        voxels = max(1, round(mm / sp))
        count *= 1 if voxels <= p else math.ceil((voxels - p) / (p * 0.5)) + 1
    return count


def _configuration(model: ModelFolder) -> dict[str, Any]:
    """The trained configuration's plans (its name is the model folder's last part)."""
    try:
        plans = json.loads((model.path / "plans.json").read_text(encoding="utf-8"))
        name = model.path.name.rsplit("__", 1)[1]
        config = plans["configurations"][name]
    except (OSError, ValueError, KeyError, IndexError):
        return {}
    return config if isinstance(config, dict) else {}


def _extension(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    choices = formats.prediction_choices()
    if fmt not in choices:
        raise DataError(f"--format {fmt}: use one of {', '.join(choices)}")
    return choices[fmt]


@contextmanager
def trainers_visible() -> Iterator[None]:
    """``nnUNet_extTrainer`` with hpcnn's trainer directory first (a user's own directories
    stay after it), for as long as nnU-Net looks trainer classes up."""
    from hpcnn.nnunet import trainer_dir

    before = os.environ.get(EXT_TRAINER)
    os.environ[EXT_TRAINER] = os.pathsep.join(p for p in (str(trainer_dir()), before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EXT_TRAINER, None)
        else:
            os.environ[EXT_TRAINER] = before


@contextmanager
def nnunet_output(log: Path, verbose: bool) -> Iterator[TextIO | None]:
    """nnU-Net's output (its prints, tqdm bars, warnings, its worker processes' output) into
    ``log`` at the file-descriptor level, so spawned workers write there too; yields the
    stream the user sees (the original stderr) for hpcnn's progress bar. With ``verbose``
    nothing is redirected (yields None). When the block fails, the error carries the log's
    last lines (the log itself goes with the work folder)."""
    import sys
    from contextlib import redirect_stderr, redirect_stdout

    if verbose:
        yield None
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        real = sys.stderr.fileno() == 2  # the terminal, not a test's capture
    except (AttributeError, OSError, ValueError):
        real = False
    saved = (os.dup(1), os.dup(2))
    shown: TextIO = os.fdopen(os.dup(2), "w", encoding="utf-8") if real else sys.stderr
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", buffering=1) as fh:
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            try:
                with redirect_stdout(fh), redirect_stderr(fh):
                    yield shown
            except Exception as exc:
                if isinstance(exc, HpcnnError):
                    raise
                fh.flush()
                tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_TAIL:]
                raise HpcnnError(
                    f"nnU-Net's predictor failed: {type(exc).__name__}: {exc}\n"
                    + "\n".join(f"    | {line}" for line in tail),
                    hint="run again with --verbose to see nnU-Net's whole output") from exc
            finally:
                fh.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for copy in saved:
            os.close(copy)
        if real:
            shown.close()


def _run_predictor(model: ModelFolder, folds: Sequence[str], device: str, fast: bool,
                   lists: list[list[str]], produced: list[Path], shown: TextIO | None = None,
                   verbose: bool = True, *, probabilities: bool = False,
                   previous_stage: Path | None = None) -> None:
    """nnU-Net's predictor on the file lists; with ``shown`` (nnU-Net's output redirected) one
    progress bar there over cases x folds, advanced after each fold's sliding-window pass;
    ``probabilities`` keeps them (.npz, for an ensemble), ``previous_stage``: the 3d_lowres
    results a cascade's second stage reads."""
    import sys

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from hpcnn.dataset.workers import available_cpus

    # As nnUNetv2_predict: every core for the network on the CPU, one thread beside CUDA.
    if device in ("cpu", "cuda"):
        torch.set_num_threads(available_cpus() if device == "cpu" else 1)
    predictor = nnUNetPredictor(use_mirroring=not fast, device=torch.device(device),
                                verbose=False, allow_tqdm=verbose and sys.stderr.isatty())
    with trainers_visible():
        try:
            predictor.initialize_from_trained_model_folder(
                str(model.path), use_folds=tuple(int(f) if f.isdigit() else f for f in folds),
                checkpoint_name=CHECKPOINT)
        except RuntimeError as exc:
            if "Could not find requested nnunet trainer" not in str(exc):
                raise
            raise DataError(f"{model.path}: trained with a trainer class this machine does not "
                            f"have ({exc})",
                            hint="put the trainer's module in a folder and add it to "
                                 f"{EXT_TRAINER}") from exc
    processes = max(1, min(3, available_cpus(), len(lists)))  # nnUNetv2_predict's -npp/-nps
    with _progress(shown, len(lists) * len(folds)) as advance:
        one_pass = predictor.predict_sliding_window_return_logits

        def counted(data: Any) -> Any:  # called once per fold and case
            logits = one_pass(data)
            advance()
            return logits

        predictor.predict_sliding_window_return_logits = counted  # type: ignore[method-assign]
        predictor.predict_from_files(lists, [str(p) for p in produced],
                                     save_probabilities=probabilities, overwrite=True,
                                     num_processes_preprocessing=processes,
                                     num_processes_segmentation_export=processes,
                                     folder_with_segs_from_prev_stage=str(previous_stage)
                                     if previous_stage else None)


@contextmanager
def _progress(stream: TextIO | None, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar over ``total`` fold passes on ``stream`` (nothing without one)."""
    if stream is None:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("predicting", BarColumn(), MofNCompleteColumn(), "fold passes (cases x folds)",
                   TimeElapsedColumn(), console=Console(file=stream), transient=False)
    task = bar.add_task("predict", total=total)
    with bar:
        yield lambda: bar.advance(task)


def _place(result: Path, final: Path, model: ModelFolder, slicer: bool) -> None:
    """Rename or convert nnU-Net's result to ``final`` through a temporary name beside it
    (``slicer``: a segmentation format whose segments carry the class names)."""
    ensure_dir(final.parent)
    same_format = not slicer and final.name.lower().endswith(model.file_ending.lower())
    if same_format:
        os.chmod(result, 0o600)
        os.replace(result, final)
        return
    import SimpleITK as sitk

    image = sitk.ReadImage(str(result))
    if slicer:
        from hpcnn.dataset.slicer import segment_header

        labels = sorted(model.labels.items(), key=lambda kv: kv[1])
        image = sitk.Cast(image, sitk.sitkUInt8 if max(v for _, v in labels) < 256
                          else sitk.sitkUInt16)
        segments = [(name, value, PALETTE[i % len(PALETTE)])
                    for i, (name, value) in enumerate(labels)]
        for key, value in segment_header(segments, image.GetSize()).items():
            image.SetMetaData(key, value)
    suffix = formats.split_extension(final.name)[1] or final.suffix
    tmp = final.with_name(f".{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        sitk.WriteImage(image, str(tmp), True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _place_dicom(result: Path, final: Path, model: ModelFolder, folds: Sequence[str],
                 case: PredictCase, fmt: str, source: Mapping[str, Any],
                 codes: Mapping[str, Any], *, force: bool) -> None:
    """Write nnU-Net's result as a DICOM-SEG or RTSTRUCT derived from the case's source series
    (its headers read here, never sent anywhere), through a temporary name beside ``final``."""
    import SimpleITK as sitk

    from hpcnn import __version__
    from hpcnn.formats.dicom_derived import Algorithm, segment_classes
    from hpcnn.formats.dicom_seg_out import write_dicom_seg
    from hpcnn.formats.dicom_series import headers
    from hpcnn.formats.rtstruct_out import write_rtstruct

    folder = source_series(case)
    assert folder is not None  # check_request refused cases without one
    method = source.get("method")
    configuration = ("+".join(method["members"]) if isinstance(method, dict)
                     else model.path.name.rsplit("__", 1)[-1])
    algorithm = Algorithm(configuration, tuple(folds), local_nnunetv2_version() or "unknown",
                          __version__)
    ensure_dir(final.parent)
    write = write_dicom_seg if fmt == "dicom-seg" else write_rtstruct
    write(sitk.ReadImage(str(result)), headers(case.images[0].files),
          segment_classes(model.labels, PALETTE, codes), algorithm, final, force=force)


def _write_record(output: Path, model: ModelFolder, folds: Sequence[str], fast: bool,
                  cases: Sequence[PredictCase], results: Sequence[Path],
                  source: Mapping[str, object]) -> None:
    from hpcnn import __version__

    record = {
        "model": str(model.path.resolve()),
        "folds": list(folds),
        "fast": fast,
        "labels": {"background": 0, **model.labels},
        "nnunetv2_version": local_nnunetv2_version(),
        "hpcnn_version": __version__,
        "cases": [{"output": str(r.relative_to(output)),
                   "images": [str(f.path.resolve()) for f in c.images]}
                  for c, r in zip(cases, results, strict=True)],
    }
    record.update(source)
    atomic_write_text(output / RECORD, json.dumps(record, indent=2) + "\n", mode=0o600)
