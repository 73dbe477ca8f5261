"""What every command shares: the lazily loaded config and the error → exit-code mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hpcnn.errors import EXIT_USAGE, HpcnnError

if TYPE_CHECKING:
    from pathlib import Path

    from hpcnn.config import Config
    from hpcnn.remote.base import Connection
    from hpcnn.services.session import Session


class AppContext:
    """Carried in ``ctx.obj``; loads cluster.yaml only when a command needs it."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._conn: Connection | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from hpcnn.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    def model_folder(self, model: str | None, run_id: str | None) -> Path:
        """A trained model's folder: ``--model DIR``, else the local results of ``--run`` (the
        most recent run by default), where ``hpcnn sync`` puts them."""
        from pathlib import Path

        if model:
            return Path(model)
        with self.session() as session:
            run, _ = session.find_run(run_id, for_model=True)
            return session.workspace.results / run.results_folder

    def start_connection(self) -> None:
        """Begin the cluster login now, for a command that is sure to need the cluster: its
        round trips (several, over a laptop's link) then overlap the imports the command still
        has to do, instead of following them. The next ``session()`` takes the connection; it
        is closed when the command ends, whatever happens before. Not where the workspace has
        recorded nothing: there the command says so without logging in."""
        if self._conn is not None or self.config.cluster.is_local:
            return
        from hpcnn.workspace import Workspace

        registry = Workspace(self.config.workspace).registry_file
        if not registry.is_file():
            return
        from hpcnn.remote import connect
        from hpcnn.remote.early_login import Hint

        self._conn = connect(self.config)
        click.get_current_context().call_on_close(self._conn.close)
        source = self.config.source
        self._conn.start(Hint(source, registry) if source is not None else None)

    def session(self, *, scheduler: str | None = None) -> Session:
        """The command's one session (use it in a ``with`` block: it closes the connection)."""
        from hpcnn.services.session import Session

        conn, self._conn = self._conn, None
        return Session(self.config, scheduler=scheduler, conn=conn)


pass_app = click.make_pass_decorator(AppContext)


def run_cli(group: click.Group, args: list[str] | None = None) -> int:
    """Run the group; HpcnnError → ``error: message`` on stderr and its exit code."""
    try:
        # Without standalone mode Click returns ctx.exit()/Exit codes instead of raising them.
        code = group.main(args=args, prog_name="hpcnn", standalone_mode=False)
    except HpcnnError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


class SchedulerChoice(click.Choice):
    """The scheduler names hpcnn knows (built-in and registered dialects), listed only when
    an option is parsed or its help shown, not at start-up."""

    def __init__(self, *, with_auto: bool = False) -> None:
        self._with_auto = with_auto
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from hpcnn.schedulers import dialect_names

        return [*dialect_names(), *(["auto"] if self._with_auto else [])]

    @choices.setter
    def choices(self, value: object) -> None:
        """Click sets the list in __init__; the names are computed instead."""
