"""Where things live: the nnU-Net folders of a workspace and hpcnn's own files beside them.

The same layout holds on the laptop (``workspace``) and where jobs run (``remote_dir``), so a
job exports ``nnUNet_*`` for the tree it runs in and results come back to the same names.

On the laptop, nnU-Net's own variables win: each of ``nnUNet_raw``, ``nnUNet_preprocessed`` and
``nnUNet_results`` that is set in the environment (and not empty) is that folder, as it is for
nnU-Net's commands; those not set are ``<workspace>/nnUNet_*``. ``workspace:`` in cluster.yaml
(default: the folder of cluster.yaml, else the current folder) holds ``.hpcnn`` in any case.
"""

from __future__ import annotations

import os
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
        return self.folder(RAW)

    @property
    def preprocessed(self) -> Path:
        return self.folder(PREPROCESSED)

    @property
    def results(self) -> Path:
        return self.folder(RESULTS)

    def folder(self, name: str) -> Path:
        """``$name`` when the environment sets it (relative to the current folder, as nnU-Net
        reads it), else ``<root>/name``."""
        value = os.environ.get(name, "").strip()
        return Path(value).expanduser().absolute() if value else self.root / name

    def origin(self, name: str) -> str:
        """Where ``folder(name)`` comes from, for messages: ``$nnUNet_raw`` or ``workspace``."""
        return f"${name}" if os.environ.get(name, "").strip() else "workspace"

    @property
    def state_dir(self) -> Path:
        return self.root / HPCNN_DIR

    @property
    def registry_file(self) -> Path:
        """The registry's database (hpcnn.state): there once something was recorded."""
        return self.state_dir / "state.db"

    def nnunet_env(self) -> dict[str, str]:
        """The ``nnUNet_*`` variables nnU-Net needs, pointing into this workspace."""
        return {name: str(self.folder(name)) for name in (RAW, PREPROCESSED, RESULTS)}


@dataclass(frozen=True)
class RemoteLayout:
    """The same layout under the cluster's ``remote_dir`` (POSIX paths, never resolved locally)."""

    root: str

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def runs(self) -> str:
        return self.path(HPCNN_DIR, "runs")

    @property
    def lib(self) -> str:
        """hpcnn's own files that jobs run: the training launcher and packaged trainers."""
        return self.path(HPCNN_DIR, "lib")

    @property
    def launcher(self) -> str:
        return posixpath.join(self.lib, "launcher.py")

    @property
    def trainers_dir(self) -> str:
        """Put on ``nnUNet_extTrainer``: holds only trainer modules (nnU-Net imports each)."""
        return posixpath.join(self.lib, "trainers")

    def job_dir(self, run: str, job: str) -> str:
        """``<remote_dir>/.hpcnn/runs/<run>/<job>``: the job's logs and markers."""
        return posixpath.join(self.runs, run, job)

    def predict_dir(self, prediction: str) -> str:
        """``<remote_dir>/.hpcnn/predict/<id>``: a prediction job's ``input`` and ``output``
        images (removed once the results are back)."""
        return self.path(HPCNN_DIR, "predict", prediction)

    def nnunet_env(self) -> dict[str, str]:
        return {name: self.path(name) for name in (RAW, PREPROCESSED, RESULTS)}
