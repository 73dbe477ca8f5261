"""Which cluster.yaml a command uses: without pydantic, so that the console script can tell
before its imports (early_login.py)."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "HPCNN_CONFIG"
DEFAULT_CONFIG_NAME = "cluster.yaml"


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """``--config`` wins, then ``$HPCNN_CONFIG``, then ``./cluster.yaml``; None means defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    here = Path.cwd() / DEFAULT_CONFIG_NAME
    return here if here.exists() else None
