"""Building and writing a cluster.yaml from answers (``hpcnn init``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from hpcnn.config import Config, validation_problems
from hpcnn.errors import ConfigError
from hpcnn.fsutil import atomic_write_text

_HEADER = """\
# hpcnn configuration written by `hpcnn init`.
# Every key is documented in cluster.yaml.example; check it all with `hpcnn doctor --probe`.
"""

_SECTIONS = {
    "cluster": ["scheduler", "host", "user", "port", "identity_file", "remote_dir", "ssh"],
    "resources": ["queue", "walltime", "cpus", "gpus", "mem", "mail_address"],
    "environment": ["setup"],
    "training": ["dataset", "device"],
}
_SECTION_OF = {key: section for section, keys in _SECTIONS.items() for key in keys}
_HOST = re.compile(r"[A-Za-z0-9_.:\[\]%-]+")


def check_answer(key: str, value: object) -> str | None:
    """What is wrong with one answer, checked as it is typed (``hpcnn init`` asks again) by the
    schema that loads cluster.yaml; None when it is fine."""
    if value in (None, "", ()):
        return None
    if key == "host":
        text = str(value)
        if "@" in text:
            return "give the login host alone; the account goes in the user question"
        if text.startswith("-") or not _HOST.fullmatch(text):
            return (f"{text!r} is not a host name, an IP address or an ~/.ssh/config alias "
                    "(letters, digits, '.', '-', '_' only)")
    from pydantic import ValidationError

    section = _SECTION_OF[key]
    try:
        Config.model_validate({section: {key: list(value) if isinstance(value, tuple) else value}})
    except ValidationError as exc:  # this answer's own errors (not how it goes with others)
        return "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()
                         if key in e["loc"]) or None
    return None


def refuse_existing(path: str | os.PathLike[str], *, force: bool) -> Path:
    """The file to write, refused if it is there (before any question is asked, and again at
    the end) unless ``force``."""
    target = Path(path)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; nothing was changed",
                          hint="pass --force to overwrite it, or --path to write elsewhere")
    return target


def build_config(answers: Mapping[str, object]) -> str:
    """YAML text for the given answers, validated by the same schema that loads it."""
    data: dict[str, dict[str, object]] = {}
    for section, keys in _SECTIONS.items():
        for key in keys:
            value = answers.get(key)
            if value in (None, (), ""):
                continue
            data.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    if "mail_address" in data.get("resources", {}):
        data["resources"]["mail_events"] = "e"
    if data.get("cluster", {}).get("host") and "scheduler" not in data["cluster"]:
        data["cluster"]["scheduler"] = "auto"
    from pydantic import ValidationError

    try:
        Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(msg for _, msg in validation_problems(exc))
        raise ConfigError(f"these answers do not make a valid config: {problems}") from exc
    return _HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_config(path: str | os.PathLike[str], text: str, *, force: bool) -> Path:
    """Write atomically; refuse to replace an existing file without ``force``."""
    return atomic_write_text(refuse_existing(path, force=force), text)
