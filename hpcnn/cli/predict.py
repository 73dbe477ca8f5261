"""``hpcnn predict``, ``hpcnn evaluate``, ``hpcnn export`` and ``hpcnn import-model``: using a
trained model on this machine and moving it between machines."""

from __future__ import annotations

import click

from hpcnn import formats
from hpcnn.cli.common import AppContext, pass_app

_MODEL_HELP = ("Trained model folder: nnUNet_results/DatasetNNN_Name/Trainer__Plans__config "
               "[default: the synced results of --run].")
_RUN = click.option("--run", "run_id",
                    help="Run whose synced model to use [default: the most recent run].")


def _echo(line: str) -> None:
    """Service messages: warnings and errors in colour on stderr, the rest on stdout."""
    for level, colour in (("warning:", "yellow"), ("error:", "red")):
        if line.startswith(level):
            click.secho(line, fg=colour, err=True)
            return
    click.echo(line)


@click.command("predict")
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.argument("output", required=False, metavar="OUTPUT")
@click.option("--model", "model", type=click.Path(file_okay=False), help=_MODEL_HELP)
@click.option("--run", "run_id",
              help="Run whose model to use: its synced folds, or with --on-cluster its folds on "
                   "the cluster [default: the most recent run].")
@click.option("--configuration", "-c", "configurations", multiple=True, metavar="NAME",
              help="Predict with this configuration of the model's trainer and plans, or "
                   "repeated, an ensemble of these [default: what `hpcnn find-best` chose, "
                   "else the model folder's].")
@click.option("--folds", "-f", multiple=True, metavar="K[,K...]",
              help="Folds to use (repeatable or comma-separated) [default: every fold with "
                   "checkpoint_final.pth].")
@click.option("--device", type=click.Choice(["auto", "cuda", "mps", "cpu"]), default="auto",
              show_default=True, help="auto: CUDA, else Apple MPS, else the CPU (with "
                                      "--on-cluster: training.device of cluster.yaml).")
@click.option("--fast", is_flag=True,
              help="No test-time augmentation (mirroring): up to 8x faster, slightly less "
                   "accurate.")
@click.option("--format", "fmt", type=click.Choice(list(formats.prediction_choices())),
              help="Result format [default: each input's own]; seg.nrrd: a 3D Slicer "
                   "segmentation with the model's class names; dicom-seg (CASE.seg.dcm) and "
                   "rtstruct (CASE.rtstruct.dcm): a DICOM object referencing the case's "
                   "source series, for DICOM series inputs (pip install 'hpcnn[dicom]').")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False),
              help="labels.yaml whose classes' `code: [CodeValue, CodingSchemeDesignator, "
                   "CodeMeaning]` (and `category`) the DICOM formats write [default: the "
                   "generic SNOMED CT 'Tissue'].")
@click.option("--on-cluster", is_flag=True,
              help="Predict as one job where the run's folds are (its GPUs): the images go "
                   "there, only the results come back.")
@click.option("--no-follow", is_flag=True,
              help="With --on-cluster: submit (or look once, with --attach) and return; exit "
                   "code 10 while the job runs.")
@click.option("--attach", "attach", metavar="ID",
              help="Come back to a prediction job submitted with --on-cluster: follow it and "
                   "bring its results back.")
@click.option("--interval", type=click.FloatRange(min=1), default=15.0, show_default=True,
              help="Seconds between looks at a job with --on-cluster.")
@click.option("--force", is_flag=True,
              help="Replace results (and hpcnn_predict.json/.log) that exist in OUTPUT.")
@click.option("--max-gib", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="Largest image (voxel data, GiB) to predict [default: the available memory "
                   "/ 8].")
@click.option("--verbose", is_flag=True,
              help="Show nnU-Net's own output (kept in OUTPUT/hpcnn_predict.log otherwise).")
@pass_app
def predict_command(app: AppContext, inputs: tuple[str, ...], output: str | None,
                    model: str | None, run_id: str | None, configurations: tuple[str, ...],
                    folds: tuple[str, ...], device: str,
                    fast: bool, fmt: str | None, on_cluster: bool, no_follow: bool,
                    attach: str | None, interval: float, force: bool, max_gib: float | None,
                    verbose: bool, labels_file: str | None) -> None:
    """Segment images with a trained model; results keep the images' names.

    INPUT is folders (searched recursively), files or quoted globs, in any format `dataset
    import` reads (.nrrd, .nii.gz, .nii, .mha), named as you like: no _0000 suffix and no
    dataset.json needed. A model with several channels takes CASE_<channel>.ext files, channel
    names from its dataset.json. Segmentations among the inputs are skipped. The ensemble uses
    every fold that finished (the missing ones are named). Images `dataset import` refuses
    (damaged data, NaN or infinite voxels, an impossible size) are refused before anything runs;
    so are results that exist already in OUTPUT, unless --force.

    Once `hpcnn find-best` chose (nnUNet_results/DatasetNNN_Name/hpcnn_choice.json), predict
    uses the winner: an ensemble predicts each member with probabilities and averages them, the
    cascade predicts 3d_lowres first; then nnU-Net's postprocessing. --model may name that
    results folder (or a model zip's, after import-model).

    --on-cluster predicts as one job on the cluster with the folds trained there (no sync
    needed), the same names and formats. Ctrl-C leaves the job running; `hpcnn predict
    --attach ID` follows it again and brings the results back. Exit codes there: 0 results in
    OUTPUT, 10 the job is still queued or running, 11 it failed.
    """
    from pathlib import Path

    wanted = [f.strip() for text in folds for f in text.split(",") if f.strip()]
    if labels_file and fmt not in ("dicom-seg", "rtstruct"):
        raise click.UsageError("--labels gives the DICOM formats their codes: use it with "
                               "--format dicom-seg or rtstruct")
    if attach:
        if inputs or output or model or wanted or fmt or fast or force or max_gib:
            raise click.UsageError("--attach ID takes no INPUT/OUTPUT and no model options: "
                                   "the job has them")
    elif not inputs or output is None:
        raise click.UsageError(f"Missing argument '{'OUTPUT' if inputs else 'INPUT...'}'.")
    if on_cluster or attach:
        if labels_file:
            raise click.UsageError("--labels goes with a prediction on this machine")
        if configurations:
            raise click.UsageError("--configuration predicts on this machine; with "
                                   "--on-cluster the run's configuration predicts")
        if model:
            raise click.UsageError("--on-cluster predicts with the folds of --run on the "
                                   "cluster; --model names a folder on this machine")
        _predict_on_cluster(app, inputs, output, run_id, wanted, device, fast, fmt, no_follow,
                            attach, interval, force, max_gib)
        return
    if no_follow:
        raise click.UsageError("--no-follow goes with --on-cluster")
    from hpcnn.nnunet.method_predict import method_for, predict_method
    from hpcnn.nnunet.predict import predict

    assert output is not None
    model_dir = app.model_folder(model, run_id)
    method = method_for(model_dir, configurations)
    if method is None:
        result = predict(model_dir, list(inputs), Path(output), wanted or None, device, fast,
                         fmt, _echo, force=force, max_gib=max_gib, verbose=verbose,
                         labels_file=Path(labels_file) if labels_file else None)
    else:
        result = predict_method(method, list(inputs), Path(output), wanted or None, device,
                                fast, fmt, _echo, force=force, max_gib=max_gib,
                                labels_file=Path(labels_file) if labels_file else None)
    click.secho(f"{len(result.outputs)} result(s) in {output} ({len(result.folds)} fold(s), "
                f"{result.device}, {result.seconds:.1f} s)", fg="green")


def _predict_on_cluster(app: AppContext, inputs: tuple[str, ...], output: str | None,
                        run_id: str | None, folds: list[str], device: str, fast: bool,
                        fmt: str | None, no_follow: bool, attach: str | None,
                        interval: float, force: bool = False,
                        max_gib: float | None = None) -> None:
    """Submit (or find) the prediction job, follow it, bring the results back; the job goes on
    when this command stops early, and the line to come back is said."""
    from pathlib import Path

    from hpcnn.errors import EXIT_RUNNING, HpcnnError
    from hpcnn.services.predict import (
        PredictJobFailed,
        follow,
        load_request,
        submit_prediction,
    )

    with app.session() as session:
        where = session.conn.description
        if attach:
            request = load_request(session, attach)
        else:
            assert output is not None
            request = submit_prediction(session, list(inputs), Path(output), run_id=run_id,
                                        folds=folds or None, device=device, fast=fast, fmt=fmt,
                                        echo=_echo, force=force, max_gib=max_gib)
            click.echo(f"prediction {request.id} submitted"
                       + ("" if no_follow else "; following it (Ctrl-C leaves the job running)"))
        come_back = (f"the job goes on; bring its results into {request.output} with: "
                     f"hpcnn predict --attach {request.id}")
        if no_follow and not attach:
            click.echo(come_back)
            raise click.exceptions.Exit(EXIT_RUNNING)
        try:
            done = follow(session, request, interval=interval, once=no_follow, echo=_echo)
        except KeyboardInterrupt:
            click.echo(f"\nstopped following; {come_back}", err=True)
            raise click.exceptions.Exit(EXIT_RUNNING) from None
        except PredictJobFailed:
            raise
        except HpcnnError:  # the connection dropped, the results were incomplete...
            click.echo(come_back, err=True)
            raise
    if done.exit_code != 0:
        click.echo(come_back)
        raise click.exceptions.Exit(done.exit_code)
    click.secho(f"{len(done.outputs)} result(s) in {request.output} ({len(request.folds)} "
                f"fold(s), job {done.row.scheduler_id} on {where}, "
                f"{done.seconds:.1f} s)", fg="green")


@click.command("evaluate")
@click.argument("pred", type=click.Path(exists=True, file_okay=False))
@click.argument("ref", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def evaluate_command(pred: str, ref: str, as_json: bool) -> None:
    """Dice per class of predictions against reference segmentations (nnU-Net's evaluation).

    PRED and REF are folders; files pair by name (case7.nrrd with case7.nrrd, case7.seg.nrrd or
    case7_label.nii.gz). Class names come from hpcnn_predict.json, which `hpcnn predict` writes
    into its output folder; Slicer references are read by segment name.
    """
    import json
    from pathlib import Path

    from hpcnn.nnunet.evaluate import evaluate

    result = evaluate(Path(pred), Path(ref), echo=_echo)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("prediction", "reference", *[f"Dice {n}" for n in result.labels])
    for case in result.cases:
        table.add_row(case.prediction, case.reference, *[_dice(case.dice[n])
                                                          for n in result.labels])
    table.add_section()
    table.add_row("mean", "", *[_dice(result.mean[n]) for n in result.labels], style="bold")
    Console().print(table)
    click.echo(f"mean foreground Dice {_dice(result.foreground_dice)} over "
               f"{len(result.cases)} case(s)")


def _dice(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.command("export")
@click.argument("zip_file", metavar="FILE.zip", type=click.Path(dir_okay=False))
@click.option("--model", "model", type=click.Path(file_okay=False), help=_MODEL_HELP)
@_RUN
@click.option("--configuration", "-c", "configurations", multiple=True, metavar="NAME",
              help="Only this configuration of the experiment (repeat for several) [default: "
                   "every configuration of the experiment of --run].")
@click.option("--force", is_flag=True, help="Replace FILE.zip if it exists.")
@click.option("--full-checkpoints", is_flag=True,
              help="nnU-Net's whole checkpoints (with the optimizer state, to resume or "
                   "fine-tune) instead of inference checkpoints, half their size.")
@pass_app
def export_command(app: AppContext, zip_file: str, model: str | None, run_id: str | None,
                   configurations: tuple[str, ...], force: bool,
                   full_checkpoints: bool) -> None:
    """Write a model zip that `hpcnn import-model` and nnU-Net's
    nnUNetv2_install_pretrained_model_from_zip read, with every finished fold (each checkpoint
    checked to hold weights and plain data only, and cut to what prediction reads).

    Once `hpcnn find-best` chose, the zip holds every configuration it compared, the choice
    and the chosen postprocessing (--model may also name nnUNet_results/DatasetNNN_Name)."""
    from pathlib import Path

    from hpcnn.nnunet.method_predict import method_for
    from hpcnn.nnunet.model_zip import export_model

    models: list[Path] = []
    if model is not None:
        if configurations:
            raise click.UsageError("--configuration picks configurations of an experiment; "
                                   "--model names the folder to export")
        target = Path(model)
    else:
        with app.session() as session:
            session.find_run(run_id, for_model=True)
            runs = session.experiment_runs(run_id, list(configurations) or None)
            models = [session.workspace.results / run.results_folder for run, _ in runs]
        target = models[0]
        method = method_for(target)
        if method is not None and method.choice is not None:
            target = method.results  # the run's configuration was among those chosen from
            if not configurations and run_id is None:
                models = []  # every configuration find-best compared, as it recorded them
        elif len(models) > 1:
            target = target.parent
        if len(models) == 1:
            target, models = models[0], []
    done = export_model(target, Path(zip_file), force=force, full_checkpoints=full_checkpoints,
                        models=models)
    click.secho(f"{zip_file}: {done.identifier}, fold(s) {', '.join(done.folds)}, "
                f"{done.size / 2**20:.1f} MiB", fg="green")
    if done.skipped:
        click.echo(f"not exported: {done.skipped}")


@click.command("import-model")
@click.argument("zip_file", metavar="FILE.zip", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace a model of the same name.")
@pass_app
def import_model_command(app: AppContext, zip_file: str, force: bool) -> None:
    """Check a model zip, then install it into this workspace's nnUNet_results.

    Refused before anything is written: a damaged or foreign zip, paths that leave the folder,
    links, checkpoints that do not load, a size out of bounds, or a model that is already
    there (unless --force).
    """
    from pathlib import Path

    from hpcnn.nnunet.model_zip import import_model
    from hpcnn.workspace import Workspace

    done = import_model(Path(zip_file), Workspace(app.config.workspace).results, force=force)
    for path in done.installed:
        click.secho(f"installed {path} (fold(s) {', '.join(done.folds[path])})", fg="green")
    for line in done.notes:
        _echo(line)
    from hpcnn.nnunet.choice import CHOICE

    dataset = done.installed[0].parent
    model = dataset if (dataset / CHOICE).is_file() else done.installed[0]
    click.echo(f"predict with: hpcnn predict --model {model} INPUT OUTPUT")


COMMANDS = [predict_command, evaluate_command, export_command, import_model_command]
