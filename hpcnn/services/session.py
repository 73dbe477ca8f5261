"""One session per command: the config, the workspace, ONE lazily opened connection, the dialect
resolved once, the registry, and the local and remote layouts.

Every command and service gets these from here and nothing else builds them, so a command opens
at most one SSH connection (closed at exit), ``auto`` is resolved the same way everywhere, and a
run's identity is always the resolved ``DatasetNNN_Name``.
"""

from __future__ import annotations

import shlex
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

from hpcnn.config import Config
from hpcnn.dataset.layout import (
    chosen_dataset,
    existing_datasets,
    match_dataset,
    parse_folder_name,
)
from hpcnn.errors import ConfigError
from hpcnn.jobs.experiment import ALL, Experiment, choose_configurations, plans_configurations
from hpcnn.jobs.model import Run
from hpcnn.state import Registry, RunRow
from hpcnn.workspace import PREPROCESSED, RAW, RemoteLayout, Workspace

if TYPE_CHECKING:
    from hpcnn.remote.base import Connection
    from hpcnn.schedulers.base import Dialect

NO_RUN_MODEL_HINT = (
    "pass --model DIR (a trained model folder: nnUNet_results/DatasetNNN_Name/"
    "Trainer__Plans__configuration), install a colleague's model with `hpcnn import-model "
    "MODEL.zip` and pass the folder it prints, or train one with `hpcnn train-all-folds`")

LOCAL_HOST = "local"
"""The registry's host key for this machine's own queue."""


class Session:
    """What one command invocation works with. Use as a context manager: the connection, if
    one was opened, is closed on exit."""

    def __init__(self, cfg: Config, *, scheduler: str | None = None,
                 conn: Connection | None = None) -> None:
        """``conn``: a connection already opened for this command (see
        ``AppContext.start_connection``); the session owns it from here and closes it."""
        self.cfg = cfg
        self.workspace = Workspace(cfg.workspace)
        self._scheduler = scheduler
        self._conn: Connection | None = conn

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def host(self) -> str:
        return self.cfg.cluster.host or LOCAL_HOST

    @property
    def is_local(self) -> bool:
        return self.cfg.cluster.is_local

    @cached_property
    def registry(self) -> Registry:
        """The workspace's registry, created on first use: only for commands that record."""
        return Registry(self.workspace.registry_file)

    @property
    def recorded(self) -> Registry | None:
        """The registry if this workspace has one, else None. What only reads (runs, status,
        logs, the facts doctor recorded) asks this, so that a command run in the wrong folder
        leaves no ``.hpcnn/state.db`` behind."""
        if "registry" in self.__dict__ or self.workspace.registry_file.is_file():
            return self.registry
        return None

    def runs(self) -> list[RunRow]:
        """Every recorded run, the most recent first (none, and nothing created, without a
        registry)."""
        registry = self.recorded
        return registry.runs() if registry else []

    def facts(self) -> dict[str, str]:
        """What ``hpcnn doctor`` recorded about this session's host."""
        registry = self.recorded
        return registry.facts(self.host) if registry else {}

    @property
    def conn(self) -> Connection:
        """The one connection of this command, opened on first use."""
        if self._conn is None:
            from hpcnn.remote import connect

            self._conn = connect(self.cfg)
        return self._conn

    @cached_property
    def dialect(self) -> Dialect:
        """The configured dialect; ``auto`` means the one ``hpcnn doctor`` detected and
        recorded for this host."""
        from hpcnn.schedulers import get_dialect

        name = self._scheduler or self.cfg.cluster.scheduler
        if name == "auto":
            name = self.facts().get("dialect", "auto")
        if name == "auto":
            raise ConfigError(
                "cluster.scheduler is 'auto' and the scheduler has not been detected yet",
                hint="run `hpcnn doctor` once (it detects and records it), or pass --scheduler",
            )
        return get_dialect(name)

    @property
    def remote(self) -> RemoteLayout:
        """Where jobs run: the absolute remote dir doctor recorded, else cluster.yaml's."""
        if self.is_local:
            return RemoteLayout(self.cfg.remote_dir)
        return RemoteLayout(self.facts().get("remote_dir") or self.cfg.remote_dir)

    # ---- runs
    def resolve_dataset(self, spec: str, *, connect: bool = True) -> str:
        """``DatasetNNN_Name`` for an id or name: found in the local workspace, else in the
        cluster's ``nnUNet_preprocessed``/``nnUNet_raw`` over this session's connection.
        ``connect=False`` (render, dry runs: they must work with no cluster in reach) looks
        here only and takes a full ``DatasetNNN_Name`` as given."""
        local = [p.name for p in existing_datasets(self.workspace.raw,
                                                   self.workspace.preprocessed).values()]
        found = match_dataset(spec, local)
        if found:
            return found
        offline = not connect and not self.is_local
        if offline and parse_folder_name(str(spec).strip()):
            return str(spec).strip()
        remote: list[str] = []
        if not self.is_local and connect:
            folders = " ".join(shlex.quote(self.remote.path(d)) for d in (PREPROCESSED, RAW))
            res = self.conn.run_shell(f"ls -1 {folders} 2>/dev/null; true", check=False)
            remote = [line.strip() for line in res.stdout.splitlines() if line.strip()]
            found = match_dataset(spec, remote)
            if found:
                return found
        where = f"{self.workspace.raw}, {self.workspace.preprocessed}" + (
            "" if self.is_local or offline else f" or {self.remote.root} on {self.host}")
        known = ", ".join(sorted(set(local + [n for n in remote if n.startswith("Dataset")])))
        hint = ("import and preprocess it (`hpcnn dataset import`, `hpcnn preprocess`), or "
                "fix training.dataset / --dataset")
        if offline:
            hint += ("; this command does not connect to the cluster: for a dataset that is "
                     "only there, name it in full (DatasetNNN_Name)")
        raise ConfigError(f"no dataset {spec!r} in {where} (datasets found: {known or 'none'})",
                          hint=hint)

    def new_run(self, dataset: str | None = None, *, trainer: str | None = None,
                plans: str | None = None, configuration: str | None = None,
                connect: bool = True) -> Run:
        """The run cluster.yaml's training section describes (each part overridable);
        ``connect`` as for resolve_dataset."""
        t = self.cfg.training
        spec = chosen_dataset(dataset, t.dataset, how="pass --dataset")
        return Run(dataset=self.resolve_dataset(spec, connect=connect),
                   trainer=trainer or t.trainer, plans=plans or t.plans,
                   configuration=configuration or next(
                       (c for c in t.chosen_configurations if c != ALL), t.configuration))

    def new_experiment(self, dataset: str | None = None, *, trainer: str | None = None,
                       plans: str | None = None, configurations: list[str] | None = None,
                       folds: list[int] | None = None, connect: bool = True) -> Experiment:
        """The experiment cluster.yaml's training section describes (each part overridable):
        its configurations (``all`` expanded) checked against the plans preprocessed here,
        before anything is submitted; ``connect`` as for resolve_dataset."""
        t = self.cfg.training
        run = self.new_run(dataset, trainer=trainer, plans=plans, connect=connect)
        plans_file = self.workspace.preprocessed / run.dataset / f"{run.plans}.json"
        chosen = choose_configurations(configurations or t.chosen_configurations,
                                       plans_configurations(plans_file), plans_file)
        return Experiment(run.dataset, run.trainer, run.plans, chosen,
                          tuple(folds or t.folds))

    def find_run(self, run_id: str | None, *, for_model: bool = False) -> tuple[Run, RunRow]:
        """``--run``: the given run (an id or a unique prefix), else the most recent one.
        ``for_model``: the caller wants a trained model, which ``--model`` or an imported
        model gives without any run; the "no runs" error says so."""
        runs = self.runs()
        if not runs:
            raise ConfigError(
                f"no runs in {self.workspace.root} yet",
                hint=NO_RUN_MODEL_HINT if for_model else "start one with `hpcnn train-all-folds`")
        if run_id is None:
            row = runs[0]
        else:
            matches = [r for r in runs if r.id == run_id] or [
                r for r in runs if r.id.startswith(run_id)]
            if len(matches) != 1:
                known = ", ".join(r.id for r in runs)
                what = "matches several runs" if matches else "matches no run"
                raise ConfigError(f"--run {run_id!r} {what} (runs: {known})",
                                  hint="pass a full run id; `hpcnn runs` lists them")
            row = matches[0]
        return Run(row.dataset, row.trainer, row.plans, row.configuration), row

    def experiment_runs(self, run_id: str | None = None,
                        configurations: list[str] | None = None) -> list[tuple[Run, RunRow]]:
        """The runs a per-configuration command shows: ``--configuration`` picks runs of the
        experiment of ``--run`` (default the most recent); without it, ``--run`` alone is one
        run, and the most recent experiment is all its runs."""
        run, row = self.find_run(run_id)
        siblings = self.registry.experiment_runs(row.experiment) if row.experiment else []
        siblings = siblings or [row]
        if configurations:
            known = {r.configuration: r for r in siblings}
            missing = [c for c in configurations if c not in known]
            if missing:
                raise ConfigError(
                    f"{row.experiment or row.id} trains no {', '.join(missing)} (it trains "
                    f"{', '.join(known)})", hint="pass one of its configurations, or --run")
            chosen = [known[c] for c in configurations]
        elif run_id is None:
            chosen = siblings
        else:
            return [(run, row)]
        return [(Run(r.dataset, r.trainer, r.plans, r.configuration), r) for r in chosen]
