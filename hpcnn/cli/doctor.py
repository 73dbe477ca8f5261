"""``hpcnn doctor``: one line per link of the chain, each failure with its fix."""

from __future__ import annotations

import click

from hpcnn.cli.common import AppContext, pass_app

_MARK = {"ok": ("ok  ", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red"),
         "skip": ("skip", "bright_black")}


@click.command("doctor")
@click.option("--probe", is_flag=True,
              help="Also submit a tiny job through the queue and show what it saw.")
@click.option("--probe-timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the probe job.")
@click.option("--accept-host-key", is_flag=True,
              help="Show the cluster's host key fingerprints and, if you confirm, record them.")
@pass_app
def doctor_cmd(app: AppContext, probe: bool, probe_timeout: float,
               accept_host_key: bool) -> None:
    """Check Python, nnU-Net, the workspace, the connection and the scheduler.

    Exits non-zero at the first broken link and says how to fix it: 3 when the cluster or
    its scheduler cannot be reached, 1 for any other broken link.
    """
    from hpcnn.services.doctor.base import CheckResult, Outcome, exit_code
    from hpcnn.services.doctor.chain import doctor

    cfg = app.config
    where = f"config {cfg.source}" if cfg.source else "no cluster.yaml: local defaults"
    click.echo(f"hpcnn doctor ({where}, scheduler {cfg.cluster.scheduler})")

    def report(result: CheckResult) -> None:
        label, colour = _MARK[result.outcome.value]
        first, *rest = (result.detail or "").splitlines() or [""]
        click.echo(click.style(f"[{label}] ", fg=colour) + f"{result.name}: {first}")
        for line in rest:
            click.echo(f"       {line}")
        if result.fix and result.outcome in (Outcome.FAIL, Outcome.WARN):
            click.echo(f"       fix: {result.fix}")

    with app.session() as session:
        if accept_host_key and not cfg.cluster.is_local:
            from hpcnn.services.doctor.remote import accept_host_key as accept

            accept(session.conn, lambda q: click.confirm(q, default=False), click.echo)
        results = doctor(session, probe=probe, report=report, probe_timeout=probe_timeout,
                         on_state=lambda text: click.echo(f"       ... {text}"))
    code = exit_code(results)
    if code:
        first = next(r for r in results if r.outcome == Outcome.FAIL)
        click.secho(f"first broken link: {first.name}", fg="red", err=True)
        raise click.exceptions.Exit(code)
    warned = [r.name for r in results if r.outcome == Outcome.WARN]
    click.secho("all checks passed" + (f", with {len(warned)} warning(s): {', '.join(warned)}"
                                       if warned else ""), fg="yellow" if warned else "green")


COMMANDS = [doctor_cmd]
