"""cluster.yaml: the schema, where it is found, and errors that name the file, line and key.

Every key hpcnn understands is declared here once; ``cluster.yaml.example`` documents each of
them. Unknown keys are errors (with the closest valid key suggested) because a silently ignored
typo such as ``walltme`` would submit a job with the wrong limit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from hpcnn.config_file import find_config_path
from hpcnn.errors import ConfigError
from hpcnn.units import format_hms, format_memory, parse_memory, parse_walltime
from hpcnn.yamlfile import read_yaml

Walltime = Annotated[
    int, BeforeValidator(parse_walltime), PlainSerializer(format_hms, return_type=str)
]
"""Seconds; accepts ``5:00:00``, ``5h``, ``90m``."""


def _margin(value: str | int) -> int:
    """A walltime, or 0: a margin of none (``0``, ``0s``, ``0:00:00``)."""
    if not isinstance(value, bool) and re.fullmatch(r"0+\s*[smhd]?|0+(:0+){1,2}",
                                                    str(value).strip().lower()):
        return 0
    return parse_walltime(value)


Margin = Annotated[int, BeforeValidator(_margin), PlainSerializer(format_hms, return_type=str)]
"""Seconds, as a Walltime, or 0."""

Memory = Annotated[
    int, BeforeValidator(parse_memory), PlainSerializer(format_memory, return_type=str)
]
"""Megabytes; accepts ``64gb``, ``64G``, ``64000mb``."""


def _one_line(v: str) -> str:
    """A newline in a value that lands in a job header or script would start a command of
    its own (run before hpcnn's body: no logs, no exit marker); CR, NUL and the other control
    characters hide or cut what a reader of the script sees. A tab is plain spacing."""
    bad = next((c for c in v if (ord(c) < 32 and c != "\t") or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r}: each value is one line "
                         "of plain text")
    return v


Line = Annotated[str, AfterValidator(_one_line)]
"""Text that lands in a job header, script or remote command: one line, no control characters."""


class KeyProblem(ValueError):
    """A problem of several keys, reported at the line of ``loc`` (a model validator's own
    errors have no key of their own)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def margin_problem(walltime: int | None, walltime_key: str, margin: int) -> str | None:
    """Why a walltime leaves no time to train once ``training.walltime_margin`` is kept back,
    or None. The launcher stops ``margin`` before the walltime: a margin as long as the
    walltime stops every attempt after its first epoch, and each continuation the same, until
    max_resubmits is used up. ``walltime_key`` names where the walltime came from (the config
    key, a per-configuration key or a command-line option)."""
    if walltime is None or not margin or margin < walltime:
        return None
    return (f"training.walltime_margin ({format_hms(margin)}) is not shorter than "
            f"{walltime_key} ({format_hms(walltime)}): each job would stop at once, after "
            "one epoch, and every continuation the same; lower training.walltime_margin "
            "(a few minutes: the time to validate and save), or 0 to train until the "
            f"scheduler's stop signal, or raise {walltime_key}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ClusterSection(_Section):
    """Where the jobs run and how hpcnn reaches it."""

    scheduler: str = "local"
    """A dialect name (hpcnn.schedulers: built-in or registered) or ``auto``."""
    host: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity_file: str | None = None
    remote_dir: Line | None = None
    ssh: Literal["fabric", "openssh"] = "fabric"
    login_shell: Line = "bash -lc"
    connect_timeout: float = Field(default=20.0, gt=0)
    transfer: Literal["auto", "rsync", "sftp"] = "auto"

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        from hpcnn.schedulers import dialect_names, is_dialect

        if v != "auto" and not is_dialect(v):
            raise ValueError(
                f"unknown scheduler; hpcnn knows {', '.join([*dialect_names(), 'auto'])}")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        # Passed to ssh as an argument: a leading '-' would be read as an option.
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.:@\[\]][A-Za-z0-9_.:@\[\]-]*", v):
            raise ValueError("a host name or ~/.ssh/config alias (letters, digits, . _ - : @)")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", v):
            raise ValueError("a cluster user name (letters, digits, . _ -)")
        return v

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, v: str | None) -> str | None:
        """``~/x`` means ``x`` under the cluster home (relative paths are already that)."""
        if v is None:
            return v
        if v in ("~", "~/"):
            raise ValueError("give a folder under your home, e.g. ~/hpcnn or hpcnn")
        if v.startswith("~"):
            if not v.startswith("~/"):
                raise ValueError("~user paths are not supported: use an absolute path or "
                                 "~/folder")
            v = v[2:]
        if v.startswith("-"):
            # Commands would read it as an option (mkdir -p -x, cd -).
            raise ValueError(f"starts with '-', which commands read as an option: write "
                             f"./{v} (under your cluster home) or an absolute path")
        return v

    @model_validator(mode="after")
    def _host_for_remote(self) -> ClusterSection:
        if self.scheduler == "local" and self.host:
            raise ValueError(
                f"scheduler 'local' runs jobs on this machine, but cluster.host is "
                f"{self.host!r}: set cluster.scheduler to your cluster's scheduler (or auto), "
                "or remove cluster.host to run jobs here"
            )
        if self.scheduler != "local" and not self.host:
            raise ValueError(
                f"scheduler {self.scheduler!r} runs jobs on a cluster: set cluster.host "
                "(a hostname or a Host alias from ~/.ssh/config)"
            )
        return self

    @property
    def is_local(self) -> bool:
        return self.scheduler == "local"


def _queue_name(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]+", v):
        raise ValueError("a queue/partition name has only letters, digits and _ . @ -")
    return v


class _OwnResources(_Section):
    """Resource keys a kind of job may set for itself (unset: the fold jobs' ones)."""

    queue: Line | None = None
    walltime: Walltime | None = None
    mem: Memory | None = None
    extra_directives: list[Line] | None = None

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return _queue_name(v)


class CpuJobResources(_OwnResources):
    """What a CPU job (preprocessing, find_best_configuration) asks for: no GPU. ``queue``
    and ``extra_directives`` left out take the fold jobs' (``resources.queue`` /
    ``resources.extra_directives``); a site whose GPU partition refuses CPU jobs names its CPU
    queue here."""

    cpus: int = Field(default=4, ge=1)


class ResourceOverrides(_OwnResources):
    """One configuration's changes to the fold jobs' resources (2d needs less memory and
    time than 3d_fullres)."""

    cpus: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0)


class ResourcesSection(_Section):
    """What each training job asks the scheduler for (``prep`` and ``find_best``: the CPU
    jobs of an experiment)."""

    queue: Line | None = None
    walltime: Walltime | None = None
    nodes: int = Field(default=1, ge=1)
    cpus: int = Field(default=4, ge=1)
    gpus: int = Field(default=1, ge=0)
    mem: Memory | None = None
    mail_events: Line | None = None
    mail_address: Line | None = None
    extra_directives: list[Line] = Field(default_factory=list)
    prep: CpuJobResources = Field(
        default_factory=lambda: CpuJobResources(cpus=8, mem="32gb", walltime="4h"))
    find_best: CpuJobResources = Field(
        default_factory=lambda: CpuJobResources(cpus=4, mem="16gb", walltime="2h"))

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return _queue_name(v)

    @field_validator("mail_address")
    @classmethod
    def _mail_address(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.+-]+@[A-Za-z0-9.-]+", v):
            raise ValueError("expected one e-mail address such as me@example.org")
        return v

    @field_validator("mail_events")
    @classmethod
    def _mail_events(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[abe]+|n", v):
            raise ValueError("use letters a (abort), b (begin), e (end), e.g. 'e' or 'abe'; or 'n'")
        return v


class EnvironmentSection(_Section):
    """How a job gets nnU-Net on its PATH (conda, module, venv) and extra variables."""

    setup: list[Line] = Field(default_factory=list)
    variables: dict[str, Line] = Field(default_factory=dict)

    @field_validator("variables")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        return v


CONFIGURATION_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class TrainingSection(_Section):
    """What nnU-Net trains: an experiment is dataset + trainer + plans + configurations; each
    configuration is one run (one ``Trainer__Plans__configuration`` folder)."""

    dataset: Line | None = None
    configuration: Line = "3d_fullres"
    """The one configuration of a single-configuration experiment (``configurations`` wins)."""
    configurations: list[Line] = Field(default_factory=list)
    """What an experiment trains; empty: ``[configuration]``; ``all``: every configuration
    the plans define."""
    resources_per_configuration: dict[str, ResourceOverrides] = Field(default_factory=dict)
    find_best: bool = True
    """With more than one configuration: run find_best_configuration as a CPU job once every
    fold of every configuration is complete."""
    trainer: Line = "nnUNetTrainer"
    plans: Line = "nnUNetPlans"
    folds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    max_resubmits: int = Field(default=3, ge=0)
    walltime_margin: Margin = "10m"
    """Stop this long before the walltime; 0: train until the scheduler's SIGTERM."""
    preprocess: Literal["local", "remote"] = "local"
    device: Literal["cuda", "cpu", "mps"] = "cuda"
    compile: bool = False
    data_augmentation_workers: int | None = Field(default=None, ge=1)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("configurations")
    @classmethod
    def _configurations(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each configuration once, e.g. [2d, 3d_fullres]")
        for name in v:
            if not CONFIGURATION_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a configuration name (2d, 3d_fullres, "
                                 "3d_lowres, 3d_cascade_fullres, all, or a plans' own)")
        if "all" in v and len(v) > 1:
            raise ValueError("'all' already means every configuration of the plans")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> TrainingSection:
        if ("configuration" in self.model_fields_set and self.configurations
                and "all" not in self.configurations
                and self.configuration not in self.configurations):
            raise ValueError(
                f"training.configuration ({self.configuration}) is not among "
                f"training.configurations ({', '.join(self.configurations)}): keep only "
                "configurations")
        return self

    @property
    def chosen_configurations(self) -> list[str]:
        """What the experiment trains, as configured (``all`` is resolved against the plans
        by hpcnn.jobs.experiment)."""
        return list(self.configurations) or [self.configuration]

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("list at least one fold, e.g. [0, 1, 2, 3, 4]")
        if len(set(v)) != len(v) or any(f < 0 for f in v):
            raise ValueError("folds must be distinct numbers >= 0")
        return v


class PreprocessSection(_Section):
    """How nnU-Net plans: the planner class and the GPU memory its networks are sized for."""

    planner: Line | None = None
    """``nnUNetPlannerResEncM``/``L``/``XL`` (nnU-Net's recommendation), a site's own class, or
    None: nnU-Net's default ``ExperimentPlanner``."""
    gpu_memory_target: float | None = Field(default=None, gt=0)
    """GB; None: the planner's own (8 GB default, 24 ResEnc L, 40 ResEnc XL)."""


class LocalSection(_Section):
    """The local scheduler: jobs on this machine."""

    max_parallel: int = Field(default=1, ge=1)


class StatusSection(_Section):
    """How status decides a job is gone."""

    lost_grace: Walltime = "5m"


class Config(_Section):
    """A whole cluster.yaml. ``source`` is the file it came from (None: built-in defaults)."""

    workspace: Path = Path(".")
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    preprocess: PreprocessSection = Field(default_factory=PreprocessSection)
    local: LocalSection = Field(default_factory=LocalSection)
    status: StatusSection = Field(default_factory=StatusSection)
    templates_dir: Path | None = None

    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _margin_inside_walltime(self) -> Config:
        problem = margin_problem(self.resources.walltime, "resources.walltime",
                                 self.training.walltime_margin)
        if problem:
            raise KeyProblem(("training", "walltime_margin"), problem)
        for name, override in self.training.resources_per_configuration.items():
            key = ("training", "resources_per_configuration", name, "walltime")
            problem = margin_problem(override.walltime, ".".join(key),
                                     self.training.walltime_margin)
            if problem:
                raise KeyProblem(key, problem)
        return self

    @property
    def remote_dir(self) -> str:
        """Where jobs run: the cluster's remote_dir, or the workspace itself for local jobs."""
        if self.cluster.is_local:
            # Jobs run here: a relative remote_dir is relative to the workspace, not $HOME.
            return str(self.workspace / (self.cluster.remote_dir or "."))
        return self.cluster.remote_dir or "hpcnn"


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the config; with no file anywhere, the embedded local defaults."""
    path = find_config_path(explicit)
    if path is None:
        cfg = Config()
        cfg.workspace = Path.cwd()
        return cfg
    return load_config_file(path)


def load_config_file(path: Path) -> Config:
    if not path.exists():
        raise ConfigError(
            f"{path}: no such config file. Create one with `hpcnn init`, or copy "
            "cluster.yaml.example."
        )
    data, root = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of keys (cluster:, ...)")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path, root)) from exc
    if not cfg.workspace.is_absolute():
        cfg.workspace = (path.parent / cfg.workspace).resolve()
    if cfg.templates_dir is not None and not cfg.templates_dir.is_absolute():
        cfg.templates_dir = (path.parent / cfg.templates_dir).resolve()
    cfg.source = path
    return cfg


def _explain(exc: ValidationError, path: Path, root: yaml.Node | None) -> str:
    lines = []
    for loc, msg in validation_problems(exc):
        line = _line_of(root, loc)
        lines.append(f"{f'{path}:{line}' if line else path}: {msg}")
    return "\n".join(lines)


def validation_problems(exc: ValidationError) -> list[tuple[list[str], str]]:
    """Each problem of a validation as (key path, a message that names the key)."""
    problems = []
    for err in exc.errors():
        problem = err.get("ctx", {}).get("error")
        if isinstance(problem, KeyProblem):
            problems.append((list(problem.loc), str(problem)))
            continue
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {key!r}"
            hint = _suggest(loc)
            if hint:
                msg += f"; did you mean {hint!r}?"
        else:
            msg = f"{key}: {_clean(err['msg'])}"
            if "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {err['input']!r})"
        problems.append((loc, msg))
    return problems


def _clean(msg: str) -> str:
    return re.sub(r"^(Value error|Assertion failed), ", "", msg)


def _suggest(loc: list[str]) -> str | None:
    import difflib  # only on the error path

    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    names = [n for n in model.model_fields if n != "source"]
    match = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    return ".".join([*loc[:-1], match[0]]) if match else None


def _line_of(node: yaml.Node | None, loc: list[str]) -> int | None:
    """1-based line of the deepest node of ``loc`` that exists in the YAML tree."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    best = key.start_mark.line + 1
                    node = value
                    break
            else:
                return best
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            best = node.start_mark.line + 1
        else:
            return best
    return best
