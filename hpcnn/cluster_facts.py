"""What ``hpcnn doctor`` learnt about a cluster, kept for later commands.

Detecting the scheduler costs a remote command; doctor does it once and records the answer
(and the absolute remote_dir) in ``<workspace>/.hpcnn/cluster.json``, keyed by host, so that
``scheduler: auto`` works for every later command without asking again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hpcnn.fsutil import atomic_write_text
from hpcnn.workspace import Workspace


def _path(workspace: Path) -> Path:
    return Workspace(workspace).state_dir / "cluster.json"


def load_facts(workspace: Path, host: str) -> dict[str, Any]:
    """Facts recorded for ``host`` ({} when none)."""
    try:
        data = json.loads(_path(workspace).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    entry = data.get(host, {})
    return entry if isinstance(entry, dict) else {}


def save_facts(workspace: Path, host: str, **facts: Any) -> None:
    """Merge ``facts`` into the host's entry (temp + rename: never half a file)."""
    path = _path(workspace)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault(host, {}).update(facts)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
