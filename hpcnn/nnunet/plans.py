"""nnU-Net's plans as hpcnn reads them: which plans file a planner wrote, which configurations it
defines, and which of them need their own preprocessed data.

The plans identifier is read from the file nnU-Net wrote, never guessed from the planner's name
(a site's planner may write any name, and ``-overwrite_plans_name`` renames it). The
configurations a user asks for are checked against it: ``3d_lowres`` and ``3d_cascade_fullres``
exist only when the planner made them (large images), and a typo such as ``3d_fulres`` would
otherwise be skipped by nnU-Net with one INFO line.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcnn.errors import DataError
from hpcnn.nnunet.commands import STANDARD_CONFIGURATIONS

ALL = "all"
MAX_PLANS_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Plans:
    """One plans file (``<identifier>.json`` in ``nnUNet_preprocessed/DatasetNNN_Name``)."""

    path: Path
    data: dict[str, Any]

    @property
    def identifier(self) -> str:
        """What ``-p``/``-plans_name`` take: the file's name without ``.json``."""
        return self.path.stem

    @property
    def configurations(self) -> list[str]:
        configurations = self.data.get("configurations")
        return list(configurations) if isinstance(configurations, dict) else []

    def configuration(self, name: str) -> dict[str, Any]:
        """``name``'s settings with what it inherits (``inherits_from``) filled in."""
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        while name and name not in seen:
            seen.add(name)
            entry = self.data.get("configurations", {}).get(name)
            if not isinstance(entry, dict):
                break
            chain.append(entry)
            name = entry.get("inherits_from", "")
        merged: dict[str, Any] = {}
        for entry in reversed(chain):
            merged.update(entry)
        return merged

    def data_identifier(self, name: str) -> str:
        return str(self.configuration(name).get("data_identifier", name))

    def summary(self, name: str) -> str:
        """``patch 32x32x32, batch 2, spacing 1x1x1``: what a user checks after planning."""
        c = self.configuration(name)

        def times(values: Any) -> str:
            return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values or [])

        return (f"patch {times(c.get('patch_size'))}, batch {c.get('batch_size', '?')}, "
                f"spacing {times(c.get('spacing'))}")


def read_plans(path: Path) -> Plans:
    """The plans file at ``path`` (a DataError when it is not one)."""
    try:
        if path.stat().st_size > MAX_PLANS_BYTES:
            raise DataError(f"{path}: larger than {MAX_PLANS_BYTES // 2**20} MB; not a plans file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read nnU-Net's plans ({exc})",
                        hint="run `hpcnn preprocess` again") from exc
    if not isinstance(data, dict) or not isinstance(data.get("configurations"), dict):
        raise DataError(f"{path}: not an nnU-Net plans file (no configurations)")
    return Plans(path, data)


def json_stamps(folder: Path) -> dict[str, int]:
    """Each ``*.json`` file's modification time, to tell afterwards which one a planner wrote."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} if folder.is_dir() \
        else {}


def written_plans(folder: Path, before: dict[str, int]) -> Plans:
    """The plans file that planning wrote into ``folder`` since ``before`` (json_stamps)."""
    changed = []
    for path in sorted(folder.glob("*.json")):
        if before.get(path.name) == path.stat().st_mtime_ns:
            continue
        try:
            changed.append(read_plans(path))
        except DataError:
            continue  # the fingerprint, dataset.json, splits: not plans
    if len(changed) != 1:
        names = ", ".join(p.path.name for p in changed) or "none"
        raise DataError(f"{folder}: expected nnU-Net's planner to write one plans file, found "
                        f"{names}", hint="see the planning log; run `hpcnn preprocess` again")
    return changed[0]


def check_names(requested: Sequence[str], known: Sequence[str] = ()) -> None:
    """Refuses, before anything runs, a name that is no configuration nnU-Net plans nor one of
    ``known`` (those of an existing plans file: a site may add its own)."""
    names = {*STANDARD_CONFIGURATIONS, *known}
    for name in requested:
        if name != ALL and name not in names:
            close = difflib.get_close_matches(name, sorted(names), n=1)
            raise DataError(f"--configuration {name}: not a configuration nnU-Net plans "
                            f"({', '.join(sorted(names))})",
                            hint=f"did you mean {close[0]}?" if close else
                            f"use one of {', '.join(sorted(names))} or {ALL}")


def resolve(requested: Sequence[str], plans: Plans) -> list[str]:
    """``requested`` against what ``plans`` define (``all``: every one of them, in the plans'
    order); a configuration the plans lack is a DataError that says why."""
    available = plans.configurations
    if ALL in requested:
        return available
    missing = [c for c in requested if c not in available]
    if missing:
        why = (" (nnU-Net makes 3d_lowres, and with it 3d_cascade_fullres, only when the "
               "3d_fullres patch covers less than a quarter of the median image: a smaller "
               "--gpu-memory-target makes smaller patches)"
               if {"3d_lowres", "3d_cascade_fullres"} & set(missing) else "")
        raise DataError(f"{plans.path.name} defines {', '.join(available)}, not "
                        f"{', '.join(missing)}{why}; nothing was preprocessed",
                        hint=f"choose among {', '.join(available)} (or {ALL})")
    return list(dict.fromkeys(requested))


def to_preprocess(configurations: Sequence[str], plans: Plans) -> list[str]:
    """One configuration per data folder: the cascade's second stage reads 3d_fullres's data
    (same ``data_identifier``), so preprocessing both would write it twice."""
    chosen: dict[str, str] = {}
    for name in configurations:
        chosen.setdefault(plans.data_identifier(name), name)
    return list(chosen.values())


def planner_exists(name: str) -> bool:
    """Whether nnU-Net finds the planner class ``name`` here (it looks only inside its own
    ``experiment_planning`` package, so a site's class must be installed there)."""
    import os

    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = os.path.join(nnunetv2.__path__[0], "experiment_planning")
    return recursive_find_python_class(folder, name,
                                       current_module="nnunetv2.experiment_planning") is not None
