"""Every key of cluster.yaml's schema is read by some code: a key that does nothing is a promise
users cannot see broken (it was the case for max_resubmits, walltime_margin, preprocess and
lost_grace before train-all-folds and status used them)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from hpcnn.config import Config

PACKAGE = Path(__file__).resolve().parents[1] / "hpcnn"
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def schema_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += schema_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_schema_key_is_read_somewhere() -> None:
    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "config.py")
    code += "\n".join(p.read_text() for p in TEMPLATES.rglob("*.j2"))
    unread = []
    for key in schema_keys():
        section, _, name = key.rpartition(".")
        owner = section.rsplit(".", 1)[-1] if section else "cfg"
        # cfg.training.max_resubmits, t.max_resubmits (a section held in a variable),
        # resources.walltime in a template, cluster.remote_dir ...
        if not re.search(rf"\.{re.escape(name)}\b", code) and f"{owner}.{name}" not in code:
            unread.append(key)
    assert not unread, f"schema keys no code reads: {unread}"
