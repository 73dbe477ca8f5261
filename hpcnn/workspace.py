"""Where things live: the nnU-Net folders of a workspace and hpcnn's own files beside them.

The same layout holds on the laptop (``workspace``) and where jobs run (``remote_dir``), so a
job exports ``nnUNet_*`` for the tree it runs in and results come back to the same names.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

RAW, PREPROCESSED, RESULTS = "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"
HPCNN_DIR = ".hpcnn"


@dataclass(frozen=True)
class Workspace:
    """A local workspace folder."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / RAW

    @property
    def preprocessed(self) -> Path:
        return self.root / PREPROCESSED

    @property
    def results(self) -> Path:
        return self.root / RESULTS

    @property
    def state_dir(self) -> Path:
        return self.root / HPCNN_DIR

    def nnunet_env(self) -> dict[str, str]:
        """The ``nnUNet_*`` variables nnU-Net needs, pointing into this workspace."""
        return {name: str(self.root / name) for name in (RAW, PREPROCESSED, RESULTS)}


@dataclass(frozen=True)
class RemoteLayout:
    """The same layout under the cluster's ``remote_dir`` (POSIX paths, never resolved locally)."""

    root: str

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def runs(self) -> str:
        return self.path(HPCNN_DIR, "runs")

    def job_dir(self, run: str, job: str) -> str:
        """``<remote_dir>/.hpcnn/runs/<run>/<job>``: the job's logs and markers."""
        return posixpath.join(self.runs, run, job)

    def nnunet_env(self) -> dict[str, str]:
        return {name: self.path(name) for name in (RAW, PREPROCESSED, RESULTS)}
