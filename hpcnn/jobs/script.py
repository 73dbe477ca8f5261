"""Job scripts from Jinja2 templates: one header per dialect plus the shared body.

Templates are looked up in the user's ``templates_dir`` first, then in the ones shipped with
hpcnn, so a user can override one header without copying the rest. Every value is quoted by the
``q`` filter in the templates; rendering is strict (an unknown variable is an error, not "").
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.errors import TemplateError
from hpcnn.units import format_hms

if TYPE_CHECKING:
    import jinja2

    from hpcnn.config import Config
    from hpcnn.jobs.model import JobSpec
    from hpcnn.schedulers.base import Dialect


def builtin_templates_dir() -> Path:
    """Templates inside the installed package, or the repository's ``templates/`` in a checkout."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "templates"
    return packaged if packaged.is_dir() else package.parent / "templates"


def quote_path(path: str) -> str:
    """Quote a path for bash; a relative one is placed under ``"$HOME"`` (where jobs' login
    shells start), so ``remote_dir: hpcnn`` works without knowing the cluster's home path."""
    text = str(path)
    return shlex.quote(text) if text.startswith("/") else '"$HOME"/' + shlex.quote(text)


def template_environment(templates_dir: Path | None = None,
                         dialect: Dialect | None = None) -> jinja2.Environment:
    """The user's templates_dir first, then a plug-in dialect's own folder, then hpcnn's; the
    header filters (``mem``, ``mail``) come from the dialect."""
    import jinja2

    search = [builtin_templates_dir()]
    if dialect is not None and dialect.templates_dir:
        search.insert(0, Path(dialect.templates_dir))
    if templates_dir is not None:
        if not templates_dir.is_dir():
            raise TemplateError(
                f"templates_dir {templates_dir} does not exist",
                hint="fix templates_dir in cluster.yaml, or remove it for the built-in templates",
            )
        search.insert(0, templates_dir)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        q=lambda v: shlex.quote(str(v)),
        qpath=quote_path,
        comment=lambda v: " ".join(str(v).split()),  # one line: cannot leave a # comment
        hms=format_hms,
    )
    if dialect is not None:
        env.filters.update(dialect.template_filters())
    return env


def render_setup(cfg: Config) -> str:
    """environment.setup as the job body runs it (each line checked, exit 97 on failure)."""
    return _render(cfg, "setup.sh.j2", {"setup": cfg.environment.setup})


def render_job(cfg: Config, dialect: Dialect, spec: JobSpec) -> str:
    """The complete job script text for ``spec`` under ``dialect``."""
    variables = {**cfg.environment.variables, **spec.env}
    context = {
        "header_template": dialect.header_template,
        "dialect": dialect.name,
        "job_name": dialect.job_name(spec.name),
        "job_id": dialect.job_id_expression(),
        "resources": spec.resources or cfg.resources,
        "local": cfg.local,
        "walltime_margin": cfg.training.walltime_margin,
        "run": spec.run,
        "job": spec.name,
        "job_dir": spec.job_dir,
        "env": variables,
        "path_env": spec.path_env,
        "setup": cfg.environment.setup,
        "commands": [shlex.join([str(a) for a in argv]) for argv in spec.commands],
    }
    return _render(cfg, "job.sh.j2", context, dialect)


def _render(cfg: Config, name: str, context: dict[str, object],
            dialect: Dialect | None = None) -> str:
    import jinja2

    env = template_environment(cfg.templates_dir, dialect)
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        dirs = ", ".join(str(p) for p in env.loader.searchpath)  # type: ignore[union-attr]
        raise TemplateError(
            f"job template {exc.name!r} not found (looked in {dirs})",
            hint="copy it from the built-in templates into your templates_dir, or fix its name",
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}"
        ) from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            f"job template uses an unknown variable: {exc.message}",
            hint="known variables: " + ", ".join(sorted(context)),
        ) from exc
