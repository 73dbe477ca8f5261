"""The environment a job gives nnU-Net: its process counts follow the job's allocation, not the
node's cores or nnU-Net's fixed defaults (8 validation/export processes per fold otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("cpus,workers,expected", [(1, None, ("1", "1")), (4, None, ("4", "4")),
                                                   (4, 2, ("2", "4"))])
def test_nnunet_processes_follow_the_allocation(tmp_path: Path, cpus: int, workers: int | None,
                                                expected: tuple[str, str]) -> None:
    import yaml

    from hpcnn.config import load_config_file
    from hpcnn.jobs.model import nnunet_env
    from hpcnn.workspace import RemoteLayout

    training = {"data_augmentation_workers": workers} if workers else {}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"workspace": str(tmp_path), "training": training}))
    env = nnunet_env(load_config_file(path), RemoteLayout("hpcnn"), cpus)
    assert (env["nnUNet_n_proc_DA"], env["nnUNet_def_n_proc"]) == expected
