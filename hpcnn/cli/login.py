"""``hpcnn login`` / ``hpcnn logout``: one connection, opened with a one-time code, for cron.

A cluster that asks for a key AND a one-time code cannot be reached by a command that has no
terminal (cron, scripts). ``login`` opens the system ssh's master connection from a terminal
(the code is typed once) and leaves it open for ``--persist``; every later hpcnn command for
that cluster, the cron sync included, rides it. The connection itself: hpcnn/remote/openssh.py
and login_master.py.
"""

from __future__ import annotations

import click

from hpcnn.cli.common import AppContext, pass_app
from hpcnn.remote.defaults import DEFAULT_PERSIST


def _persist_seconds(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from hpcnn.units import parse_walltime

    try:
        return parse_walltime(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration: use e.g. 8h, 12h, 90m, "
                                 "1h30m or 8:00:00", ctx=ctx, param=param) from None


def _cluster_connection(app: AppContext):  # noqa: ANN202 - OpenSSHConnection, imported late
    from hpcnn.errors import ConfigError
    from hpcnn.remote.openssh import OpenSSHConnection

    cfg = app.config
    if cfg.cluster.is_local:
        raise ConfigError("there is no cluster to log in to: the scheduler is local "
                          "(no cluster.yaml, or cluster.scheduler: local)",
                          hint="give the cluster.yaml with --config or $HPCNN_CONFIG")
    return OpenSSHConnection(cfg.cluster)


def _when(epoch: float | None) -> str:
    from datetime import datetime

    if epoch is None:
        return "until it has been idle for its persist time"
    return f"until {datetime.fromtimestamp(epoch).strftime('%Y-%m-%d %H:%M')}"


@click.command("login")
@click.option("--persist", default=DEFAULT_PERSIST, show_default=True, metavar="DURATION",
              callback=_persist_seconds,
              help="How long the login lasts (8h, 12h, 90m, 1h30m); `hpcnn logout` ends it "
                   "sooner.")
@pass_app
def login_cmd(app: AppContext, persist: int) -> None:
    """Log in to the cluster once (key + one-time code) and keep the connection open.

    For clusters with two-factor login: run it in a terminal, type the code once, and every
    later hpcnn command for this cluster (whatever cluster.ssh says) and the cron sync ride
    this one connection of the system ssh until it ends. Without it, a command with no
    terminal stops with "this cluster asks for a one-time code" (exit 3).
    """
    from hpcnn.units import format_hms

    with _cluster_connection(app) as conn:
        opened = conn.login(persist)
        until = _when(conn.login_until())
        if opened:
            click.echo(f"logged in to {conn.description} {until} ({format_hms(persist)}): "
                       "hpcnn commands and cron ride this connection; `hpcnn logout` ends it")
        else:
            click.echo(f"already logged in to {conn.description} {until}; `hpcnn logout` "
                       "ends it")


@click.command("logout")
@pass_app
def logout_cmd(app: AppContext) -> None:
    """Close the connection `hpcnn login` opened (commands with no terminal then stop)."""
    with _cluster_connection(app) as conn:
        if conn.logout():
            click.echo(f"logged out of {conn.description}")
        else:
            click.echo(f"not logged in to {conn.description}")


COMMANDS = [login_cmd, logout_cmd]
