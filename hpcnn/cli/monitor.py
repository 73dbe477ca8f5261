"""``hpcnn status``, ``runs``, ``logs``, ``sync``: following a run and fetching its results."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import click

from hpcnn.cli.common import AppContext, pass_app
from hpcnn.units import format_bytes

if TYPE_CHECKING:
    from hpcnn.services.session import Session
    from hpcnn.services.status import FoldStatus, RunStatus
    from hpcnn.services.sync import SyncResult

_RUN = click.option("--run", "run_id", help="Run id or prefix (default: the most recent run).")


def _on_terminal() -> bool:
    import sys

    return sys.stdout.isatty()


def _rounded(value: float | None, digits: int) -> float | None:
    """nnU-Net logs float32 values (0.6624000072479248): shown as the digits that mean
    something; NaN (a class not seen yet) becomes null, which JSON can carry."""
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def fold_record(fold: FoldStatus, now) -> dict[str, object]:  # noqa: ANN001 - datetime
    """One fold as ``--json`` gives it (and the table shows it)."""
    from hpcnn.cli.status_table import mean

    view, log = fold.view, fold.log
    last = log.last
    best = log.best_ema
    planned = log.planned_epochs
    dice = last.pseudo_dice if last else []
    eta = log.eta_seconds() if view.state.value in ("running", "queued", "held") else None
    return {
        "fold": view.fold,
        "state": view.state.value,
        "exit_code": view.exit_code,
        "attempt": view.attempt,
        "attempts": view.attempts,
        "job_id": view.row.scheduler_id,
        "job": view.row.name,
        "node": fold.node,
        "epoch": last.epoch + 1 if last else 0,
        "planned_epochs": planned,
        "pseudo_dice": [_rounded(d, 4) for d in dice],
        "pseudo_dice_mean": _rounded(mean(dice), 4),
        "best_ema_dice": _rounded(best[0], 4) if best else None,
        "mean_epoch_s": _rounded(log.mean_epoch_time(10), 1),
        "eta_s": None if eta is None else round(eta),
        "gpu_hours": round(fold.gpu_hours(now), 3),
        "detail": view.detail,
        "error_tail": fold.err_tail if view.state.value in ("failed", "lost", "timeout") else "",
        "hint": fold.hint,
    }


def _record(status: RunStatus) -> dict[str, object]:
    """One run as ``--json`` gives it."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return {"run": status.run.id, "configuration": status.run.configuration,
            "dataset": status.run.dataset, "scheduler_answered": status.answered,
            "exit_code": status.exit_code, "folds": [fold_record(f, now) for f in status.folds]}


def _render(status: RunStatus, wide: bool = False) -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    records = [fold_record(f, now) for f in status.folds]
    from rich.console import Console

    from hpcnn.cli.status_table import print_table, summary

    console = Console()
    print_table(console, f"run {status.run.id} ({status.run.results_folder})", records,
                wide=wide)
    for r in records:
        if r["detail"] and r["state"] not in ("completed",):
            console.print(f"fold {r['fold']}: {r['detail']}", markup=False, highlight=False)
        if r["error_tail"]:
            for line in str(r["error_tail"]).splitlines()[-5:]:
                console.print(f"    | {line}", markup=False, highlight=False)
        if r["hint"]:
            console.print(f"    fix: {r['hint']}", markup=False, highlight=False)
    console.print(summary(records, status.answered), markup=False, highlight=False,
                  soft_wrap=True)


def _show(session: Session, statuses: list[RunStatus], code: int, as_json: bool,
          wide: bool) -> None:
    """One poll's answer: JSON, or a table per run and the winner line of an experiment."""
    from hpcnn.services.method import chosen

    choice = chosen(session, [(s.run, s.row) for s in statuses])
    if as_json:
        import json
        from dataclasses import asdict

        record = ({"exit_code": code, "runs": [_record(s) for s in statuses]}
                  if len(statuses) > 1 else _record(statuses[0]))
        record["choice"] = None if choice is None else {
            **{k: v for k, v in asdict(choice).items() if k != "instructions"},
            "summary": choice.summary()}
        click.echo(json.dumps(record, indent=2))
    else:
        for status in statuses:
            _render(status, wide)
        if choice is not None:
            click.secho(choice.summary(), bold=True)


@click.command("status")
@_RUN
@click.option("--configuration", "-c", "configurations", multiple=True,
              help="Only this configuration of the experiment (repeat for several; default: "
                   "every configuration of the most recent experiment).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (every class's pseudo-Dice included).")
@click.option("--wide", is_flag=True,
              help="Every column and the pseudo-Dice of each class, however wide.")
@click.option("--watch", is_flag=True, help="Refresh until every fold has finished (Ctrl-C stops).")
@click.option("--interval", type=float, default=30.0, show_default=True,
              help="Seconds between refreshes with --watch (at least 10).")
@pass_app
def status_cmd(app: AppContext, run_id: str | None, configurations: tuple[str, ...],
               as_json: bool, wide: bool, watch: bool, interval: float) -> None:
    """Where every fold of a run stands: state, true exit status, attempt, epoch, mean
    pseudo-Dice, best EMA Dice, epoch time, ETA, node, GPU-hours — in one SSH round trip;
    then one line with the counts and the next command. A narrow terminal drops the least
    useful columns (job, node, GPU-hours first); --wide shows all and each class's Dice.
    With several configurations (an experiment), a table for each.

    Exit codes: 0 all folds completed, 10 some queued or running, 11 some failed, lost or
    cancelled, 3 the cluster or its scheduler did not answer.
    """
    app.start_connection()  # the login's round trips overlap the imports below
    from hpcnn.errors import EXIT_FAILED, EXIT_OK, HpcnnError
    from hpcnn.services.status import experiment_status, worst_exit

    interval = max(10.0, interval)
    code: int | None = None
    with app.session() as session:
        wait = interval
        try:
            while True:
                try:
                    statuses = experiment_status(session, run_id, list(configurations) or None)
                except HpcnnError as exc:
                    if not watch or exc.exit_code == 2:
                        raise
                    click.echo(f"error: {exc} (retrying in {wait:.0f} s)", err=True)
                    time.sleep(wait)
                    wait = min(wait * 2, 600)
                    continue
                if watch:  # the polls that follow: one round trip each (remote/kept_shell.py)
                    session.conn.keep_shell()
                wait = interval
                code = worst_exit(statuses)
                _show(session, statuses, code, as_json, wide)
                if not watch or code in (EXIT_OK, EXIT_FAILED):
                    break
                time.sleep(interval)
        except KeyboardInterrupt:  # Ctrl-C while watching, whenever it comes, stops watching
            if not watch or code is None:
                raise
            click.echo("stopped watching; the jobs go on", err=True)
    raise click.exceptions.Exit(code)


@click.command("runs")
@pass_app
def runs_cmd(app: AppContext) -> None:
    """Every run of this workspace, the most recent first, with its folds' last known states."""
    from hpcnn.services.status import runs_overview

    with app.session() as session:
        overview = runs_overview(session)
    if not overview:
        click.echo("no runs yet: start one with `hpcnn train-all-folds`")
    for row, views in overview:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created_at))
        folds = "  ".join(f"f{v.fold}:{v.state}" for v in views)
        click.echo(f"{row.id}  {when}  {row.host}  {folds}")


@click.command("logs")
@click.argument("fold", type=int)
@_RUN
@click.option("--err", is_flag=True, help="The job's stderr (err.log) instead of stdout.")
@click.option("--training", is_flag=True, help="nnU-Net's training log of the fold instead.")
@click.option("--tail", "tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--follow", is_flag=True, help="Keep printing what is appended (Ctrl-C).")
@pass_app
def logs_cmd(app: AppContext, fold: int, run_id: str | None, err: bool, training: bool,
             tail: int | None, follow: bool) -> None:
    """A fold's job output (of its latest attempt) or its nnU-Net training log."""
    from hpcnn.services.logs import fold_log

    with app.session() as session:
        seen = fold_log(session, run_id, fold, err=err, training=training, tail=tail,
                        echo=lambda text: click.echo(text, nl=False),
                        note=lambda text: click.echo(f"note: {text}", err=True))
        try:
            while follow:
                time.sleep(5)
                seen = fold_log(session, run_id, fold, err=err, training=training,
                                since=seen, echo=lambda text: click.echo(text, nl=False))
        except KeyboardInterrupt:
            pass


@click.command("sync")
@_RUN
@click.option("--configuration", "-c", "configurations", multiple=True, metavar="NAME",
              help="Only this configuration of the experiment (repeat for several) [default: "
                   "every configuration of the experiment of --run].")
@click.option("--with-latest", is_flag=True,
              help="Also checkpoint_latest/best.pth, and nnU-Net's whole final checkpoint.")
@click.option("--full-checkpoints", is_flag=True,
              help="nnU-Net's whole checkpoint_final.pth (with the optimizer state, to resume "
                   "or fine-tune here) instead of the inference checkpoint, half its size.")
@click.option("--with-validation-npz", is_flag=True, help="Also validation/*.npz.")
@click.option("--all", "everything", is_flag=True, help="Every file of the finished folds.")
@click.option("--install-cron", metavar="SCHEDULE",
              help='Add a crontab line running this sync, e.g. "*/30 * * * *".')
@click.option("--uninstall-cron", is_flag=True, help="Remove this workspace's crontab line.")
@click.option("--then-predict", nargs=2, metavar="INPUT OUTPUT",
              help="Once every fold is synced, predict INPUT into OUTPUT with the ensemble "
                   "(once: an OUTPUT that exists is left alone).")
@pass_app
def sync_cmd(app: AppContext, run_id: str | None, configurations: tuple[str, ...],
             with_latest: bool, full_checkpoints: bool, with_validation_npz: bool,
             everything: bool, install_cron: str | None, uninstall_cron: bool,
             then_predict: tuple[str, str] | None) -> None:
    """Pull the finished folds' results into the local nnUNet_results (safe under cron).

    Every configuration of the experiment (or those given with -c), and what a
    find_best_configuration job wrote (its answer, the cross-validation summaries and
    postprocessing files), recorded as the choice `hpcnn predict` uses. Quiet unless something
    changed. Never deletes a local file; an interrupted download never replaces a good file.
    Exit codes: 0 every fold completed and synced, 10 some still queued or running, 11 some
    failed, 12 another sync is running, 3 cluster unreachable.
    """
    if install_cron or uninstall_cron:
        from hpcnn.services.cron import install, uninstall

        cfg = app.config
        line = (install(cfg, install_cron, run_id) if install_cron else uninstall(cfg))
        click.echo(line)
        return
    from hpcnn.services.sync import all_synced, sync_run

    with app.session() as session:
        session.find_run(run_id)  # no runs: said before the sync lock leaves any state here
        synced = sync_run(session, run_id, list(configurations) or None, latest=with_latest,
                          npz=with_validation_npz, everything=everything,
                          full_checkpoints=full_checkpoints, echo=click.echo)
    for result in synced.runs:
        _report_sync(result)
    if synced.method_files:
        click.echo(f"find-best's answer: {len(synced.method_files)} file(s) into "
                   f"{synced.results}")
    if synced.choice is not None:
        click.secho(synced.choice.summary(), bold=True)
    if synced.choice_problem:
        click.echo(f"warning: {synced.choice_problem}", err=True)
    if then_predict and all_synced(synced):
        from pathlib import Path

        from hpcnn.nnunet.method_predict import method_for, predict_method
        from hpcnn.nnunet.predict import predict

        source, target = then_predict
        if not Path(target).exists():
            method = method_for(synced.runs[0].model_dir)  # find-best's choice, once made
            done = (predict_method(method, [source], Path(target), echo=click.echo)
                    if method is not None else
                    predict(synced.runs[0].model_dir, [source], Path(target), echo=click.echo))
            click.echo(f"predicted {len(done.outputs)} case(s) into {target} with fold(s) "
                       f"{', '.join(done.folds)}")
    raise click.exceptions.Exit(synced.exit_code)


def _report_sync(result: SyncResult) -> None:
    """What a sync did for one configuration (quiet under cron when nothing changed)."""
    synced = ', '.join(map(str, result.synced_folds)) or 'none'
    if result.pulled:
        click.echo(f"run {result.status.run.id}: {len(result.pulled)} file(s), "
                   f"{format_bytes(result.nbytes)} into {result.model_dir}; folds synced: "
                   f"{synced}")
    elif _on_terminal():  # under cron (its own log) a sync that changed nothing stays quiet
        others = ", ".join(f"{f.view.fold} ({f.view.state})" for f in result.status.folds
                           if f.view.fold not in result.synced_folds)
        click.echo(f"run {result.status.run.id}: nothing new to pull; folds synced: {synced}"
                   + (f"; not synced: {others}" if others else ""))
    for fold in result.missing:
        click.echo(f"warning: fold {fold} is completed but {result.remote_dir}/fold_{fold}/"
                   "checkpoint_final.pth is not on the cluster (moved or deleted there?); "
                   f"retrain it with `hpcnn train-all-folds --fresh --folds {fold}`", err=True)


COMMANDS = [status_cmd, runs_cmd, logs_cmd, sync_cmd]
