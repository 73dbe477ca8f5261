"""``hpcnn dataset import|check`` and ``hpcnn preprocess``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from hpcnn import formats
from hpcnn.cli.common import AppContext, pass_app

if TYPE_CHECKING:
    from hpcnn.dataset.findings import Finding
    from hpcnn.workspace import Workspace


@click.group("dataset")
def dataset_group() -> None:
    """Turn Slicer/NRRD/NIfTI exports into a valid nnU-Net dataset, and check one."""


@dataset_group.command("import")
@click.argument("source", type=click.Path())
@click.option("--name", required=True, help="Dataset name: the folder is DatasetNNN_NAME.")
@click.option("--id", "dataset_id", type=int,
              help="Dataset id 1-999 [default: the id of the dataset with this name, else the "
                   "next free one from 501].")
@click.option("--labels", "labels_file",
              type=click.Path(exists=True, dir_okay=False),
              help="labels.yaml: class names in order, their synonyms and source values "
                   "(format below).")
@click.option("--remap", multiple=True, metavar="OLD:NEW[,...]",
              help="Plain label maps: map input values, e.g. 255:1 (repeatable).")
@click.option("--overlap", metavar="NAME,...",
              help="Overlapping Slicer segments: priority order, first wins [default: error].")
@click.option("--modality", metavar="CT|MR[,...]",
              help="channel_names, one for all channels or one each; CT selects nnU-Net's CT "
                   "normalisation. DICOM: also the series' Modality to import.")
@click.option("--series-description", metavar="TEXT", multiple=True,
              help="DICOM: the image series whose SeriesDescription matches (case-insensitive, "
                   "* and ? allowed) [default: the only series, or the one the label "
                   "references]; repeat it for channels, in channel order (--modality CT,PT "
                   "too).")
@click.option("--channels", metavar="T1,T2,...",
              help="Several images per case, named CASE_T1 ...: channels in this order.")
@click.option("--pattern", metavar="REGEX",
              help="Pair other names: a regex with (?P<case>...) and optional (?P<label>...) "
                   "and (?P<channel>...) groups, searched in each relative path.")
@click.option("--format", "file_format", type=click.Choice(list(formats.dataset_choices())),
              help="Output format [default: nrrd when every input is NRRD, else nii.gz].")
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.2,
              show_default=True, help="Labelled cases held out in imagesTs/labelsTs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--strict", is_flag=True,
              help="Treat warnings (an image without segmentation, a missing segment) as errors.")
@click.option("--force", is_flag=True, help="Replace an existing dataset with this id.")
@click.option("--workers", "-j", type=click.IntRange(min=1),
              help="Parallel processes [default: all cores].")
@click.option("--max-gib", type=click.FloatRange(min=0, min_open=True),
              help="Largest image to read, in GiB of memory [default: the memory available "
                   "shared by the workers, a quarter each].")
@click.option("--allow-outside-source", is_flag=True,
              help="Read files that symbolic links or detached headers (.nhdr data file, .mhd "
                   "ElementDataFile) place outside SOURCE [default: refused].")
@click.option("--anonymize", is_flag=True,
              help="Opaque case ids (case_001...) in a seeded order and no header keys but the "
                   "geometry; only cases.csv, which stays on this machine, maps them back.")
@pass_app
def import_command(app: AppContext, source: str, name: str, dataset_id: int | None,
                   labels_file: str | None, remap: tuple[str, ...], overlap: str | None,
                   modality: str | None, channels: str | None, pattern: str | None,
                   file_format: str | None, test_fraction: float, seed: int, strict: bool,
                   force: bool, workers: int | None, max_gib: float | None,
                   allow_outside_source: bool, anonymize: bool,
                   series_description: tuple[str, ...]) -> None:
    """Import Slicer/NRRD/NIfTI exports or DICOM into nnUNet_raw/DatasetNNN_NAME.

    SOURCE is a folder (searched recursively) or a CSV with image and segmentation columns.
    Images pair with segmentations by name: case7.nrrd with case7.seg.nrrd, case7_label.nii.gz,
    case7-label.nrrd or "case7 Segmentation.seg.nrrd". Slicer segments become classes by name,
    whatever label value each file stored; segmentations are put onto their image's grid. Images
    without a segmentation go to imagesTs. Nothing is written unless every case imports. Detached
    headers (.nhdr, .mhd) are read with their data files; every file's data are checked whole
    (gzip CRC, declared size) before it is read.

    DICOM (pip install 'hpcnn[dicom]'): one folder per case holding the series (any file
    names, nested) and its label, a DICOM-SEG or RTSTRUCT referencing the series or a label file;
    several series of one grid become channels (--series-description t1* --series-description
    t2*); cases get hpcnn's names, the UIDs stay in .hpcnn/dicom/ (0600).

    \b
    labels.yaml lists the classes in order (class 1, 2, ...); every key but the name is
    optional:
      liver:                      # class 1
        synonyms: [Leber, Segment_1]
        source_values: [1, 255]   # plain label maps: these values are liver
      tumor: [lesion, tumour]     # short form: synonyms only
      vessel: 3                   # short form: the class value
      background: [unlabelled]    # names that mean background
    Plain label maps beside Slicer segmentations need source_values (which value is which
    class): nothing else says it.
    """
    from pathlib import Path  # off the start-up path, like everything below

    from hpcnn.dataset.importer import ImportOptions, import_dataset
    from hpcnn.dataset.interrupt import signals_raise
    from hpcnn.workspace import RAW, Workspace

    options = ImportOptions(
        source=Path(source), name=name, dataset_id=dataset_id,
        labels_file=Path(labels_file) if labels_file else None, remap=remap,
        overlap=_names(overlap), modality=_names(modality), channels=_names(channels),
        pattern=pattern, file_format=file_format, test_fraction=test_fraction, seed=seed,
        strict=strict, force=force, workers=workers, allow_outside_source=allow_outside_source,
        max_gib=max_gib, anonymize=anonymize, series_description=series_description,
    )
    workspace = Workspace(app.config.workspace)
    click.echo(f"reads {Path(source)}; writes {_where(workspace, RAW)}")
    with signals_raise(), _progress() as on_progress:
        result = import_dataset(workspace, options, on_progress)
    _print_findings(result.findings)
    labels = ", ".join(f"{k} {v}" for k, v in result.labels.items())
    click.secho(f"{result.dataset.folder_name}: {result.count('train')} training, "
                f"{result.count('test')} test, {result.count('unlabelled')} unlabelled case(s), "
                f"{result.file_ending} → {result.path}", fg="green")
    click.echo(f"labels: {labels}")


@dataset_group.command("check")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {severity, file, code, message, hint} instead.")
@click.option("--workers", "-j", type=click.IntRange(min=1),
              help="Parallel processes [default: all cores].")
@pass_app
def check_command(app: AppContext, dataset: str, as_json: bool, workers: int | None) -> None:
    """Report every problem of a raw nnU-Net dataset at once, file by file, with fixes.

    DATASET is an id (501), a name (Liver), a folder name (Dataset501_Liver) or a path. Runs
    all of nnU-Net's integrity checks and more (empty, float or undeclared labels, orphan and
    stray files, imagesTs names, NaN/Inf, orientation, duplicates, dataset.json mistakes).
    Exit code 2 when there are errors, 0 with warnings only.
    """
    import json

    from hpcnn.dataset import dicom_map
    from hpcnn.dataset.check import check_dataset
    from hpcnn.dataset.interrupt import signals_raise
    from hpcnn.dataset.layout import resolve_dataset
    from hpcnn.dataset.leftovers import sweep
    from hpcnn.errors import EXIT_USAGE
    from hpcnn.workspace import RAW, Workspace

    cfg = app.config
    workspace = Workspace(cfg.workspace)
    folder = resolve_dataset(dataset, workspace.raw)
    click.echo(f"reads {folder} (in {_where(workspace, RAW)}); writes nothing", err=as_json)
    _print_findings(sweep(folder.parent), err=as_json)  # stdout stays JSON alone
    with signals_raise(), _progress() as on_progress:
        report = check_dataset(folder, folds=cfg.training.folds, workers=workers,
                               on_progress=on_progress,
                               dicom_mapping=dicom_map.path_for(workspace.state_dir,
                                                                folder.name))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        text = report.as_text(style=_style)
        if text:
            click.echo(text)
        click.secho(report.summary(), fg="red" if report.errors else "green")
    if report.errors:
        raise click.exceptions.Exit(EXIT_USAGE)


@click.command("preprocess")
@click.argument("dataset", required=False)
@click.option("--configuration", "-c", "configurations", metavar="NAME", multiple=True,
              help="nnU-Net configuration: 2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres, or "
                   "all (every one the plans define); repeatable [default: "
                   "training.configuration, 3d_fullres].")
@click.option("--planner", metavar="CLASS",
              help="nnU-Net planner: nnUNetPlannerResEncM, nnUNetPlannerResEncL, "
                   "nnUNetPlannerResEncXL or a site's own [default: preprocess.planner, else "
                   "nnU-Net's ExperimentPlanner].")
@click.option("--gpu-memory-target", type=float, metavar="GB",
              help="GPU memory the planner sizes the network for [default: "
                   "preprocess.gpu_memory_target, else the planner's].")
@click.option("--workers", "-j", type=click.IntRange(min=1),
              help="nnU-Net processes (-np/-npfp) [default: sized to cores and memory].")
@pass_app
def preprocess_command(app: AppContext, dataset: str | None, configurations: tuple[str, ...],
                       planner: str | None, gpu_memory_target: float | None,
                       workers: int | None) -> None:
    """Plan and preprocess a dataset with nnU-Net, once `dataset check` finds no errors.

    DATASET defaults to training.dataset. Plans with nnUNetv2_plan_and_preprocess (integrity
    checks; --clean when the cases or files changed), checks the configurations asked for
    against the plans written (before anything is preprocessed), preprocesses them, writes
    splits_final.json for the current cases and hpcnn_provenance.json (versions, planner, plans
    identifier, configurations, case list) into nnUNet_preprocessed/DatasetNNN_Name. nnU-Net's
    own output goes to a log file under .hpcnn/logs.
    """
    import sys

    from hpcnn.dataset import preprocess
    from hpcnn.dataset.interrupt import Interrupted, signals_raise
    from hpcnn.dataset.leftovers import sweep
    from hpcnn.fsutil import private_log
    from hpcnn.workspace import PREPROCESSED, RAW, Workspace

    workspace = Workspace(app.config.workspace)
    click.echo(f"reads {_where(workspace, RAW)}; writes {_where(workspace, PREPROCESSED)}")
    _print_findings(sweep(workspace.raw))
    with signals_raise(), _progress() as on_progress:
        job = preprocess.prepare_configured(
            app.config, dataset, configurations=configurations, planner=planner,
            gpu_memory_target=gpu_memory_target, workers=workers, on_progress=on_progress,
            interactive=sys.stdout.isatty())
    for text in job.warnings:
        click.secho(f"warning: {text}", fg="yellow")
    click.echo(f"{job.dataset.folder_name}: {len(job.cases)} cases, "
               f"{' '.join(job.configurations)}, planner {job.planner or 'ExperimentPlanner'}, "
               f"{job.workers} worker(s) ({job.workers_reason}); "
               f"{'--clean: ' if job.clean else ''}{job.clean_reason}")
    name = f"preprocess-{job.dataset.folder_name}.log"
    try:
        with signals_raise(), private_log(workspace.state_dir, name) as (log, out):
            click.echo(f"nnU-Net's output: {log}")
            result = preprocess.run(job, out=out)
    except Interrupted as exc:
        raise Interrupted(exc.signum, f"{job.output} is incomplete (no provenance, so training "
                                      "will not use it)",
                          hint="run `hpcnn preprocess` again") from None
    click.echo(f"plans {result.plans.identifier} ({result.plans.path.name}); defines "
               f"{', '.join(result.plans.configurations)}")
    for name in result.configurations:
        click.echo(f"  {name}: {result.plans.summary(name)}")
    click.secho(f"preprocessed {', '.join(result.configurations)} into {result.output} in "
                f"{result.seconds:.0f} s; splits_final.json {result.splits}; provenance "
                f"{result.provenance.name}", fg="green")


def _where(workspace: Workspace, name: str) -> str:
    """``nnUNet_raw /path ($nnUNet_raw)``: which folder, and which setting chose it."""
    return f"{name} {workspace.folder(name)} ({workspace.origin(name)})"


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


_LEVEL_STYLE = {"error": "red", "warning": "yellow", "fix": "cyan", "notice": None}


def _style(text: str, part: str) -> str:
    """A file name in bold, a level in its colour."""
    if part == "file":
        return click.style(text, bold=True)
    return click.style(text, fg=_LEVEL_STYLE[part])


def _print_findings(findings: list[Finding], *, err: bool = False) -> None:
    from hpcnn.dataset.findings import summary_lines

    for level, text in summary_lines(findings):
        click.secho(f"{level}: {text}", fg=_LEVEL_STYLE[level], err=err)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr (only drawn on a terminal), one task per phase. It redraws
    when told rather than from its own thread, so the import may fork its workers."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    tasks: dict[str, Any] = {}
    with Progress(console=console, transient=True, auto_refresh=False,
                  disable=not console.is_terminal) as bar:

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, refresh=True)

        yield update


COMMANDS = [dataset_group, preprocess_command]
