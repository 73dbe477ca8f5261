"""A push through the test bed: hpcnn's job files travel in the dataset's company as ONE
rsync beside the dataset's, and the question whether the cluster has rsync rides the push's
first command (bench/train_push.py times the no-op push against ssh + rsync)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcnn.jobs import transfer
from hpcnn.nnunet import launcher_path, trainer_dir
from hpcnn.remote import connect
from hpcnn.state import Registry
from hpcnn.workspace import RemoteLayout


class Counted:
    """The remote commands and rsyncs a connection runs (their real work untouched)."""

    def __init__(self, conn: object) -> None:
        self.commands: list[str] = []
        self.rsyncs: list[list[str]] = []
        run, rsync = conn._run, conn._rsync  # type: ignore[attr-defined]

        def counted_run(line: str, **kwargs: object) -> object:
            self.commands.append(line)
            return run(line, **kwargs)

        def counted_rsync(src: object, dst: str, *args: object, **kwargs: object) -> None:
            self.rsyncs.append([*([src] if isinstance(src, str) else src), dst])
            rsync(src, dst, *args, **kwargs)

        conn._run, conn._rsync = counted_run, counted_rsync  # type: ignore[attr-defined]


@pytest.mark.testbed
@pytest.mark.parametrize("ssh", ["openssh", "fabric"])
def test_a_push_is_one_command_and_one_rsync_per_item(cluster_config, tmp_path: Path,
                                                      ssh: str) -> None:
    cfg = cluster_config("torque", ssh)
    data = tmp_path / "Dataset001_Push"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "case.b2nd").write_bytes(b"x" * 1000)
    registry = Registry(tmp_path / "registry.sqlite")
    for _ in range(2):  # the first push copies, the second has nothing to move
        with connect(cfg) as conn:
            layout = RemoteLayout(cfg.remote_dir)
            counted = Counted(conn)
            items = [*transfer.job_file_items(layout),
                     transfer.PushItem("dataset", data, layout.path("nnUNet_preprocessed",
                                                                     data.name))]
            transfer.push(conn, registry, layout, items, run=None)
            assert len(counted.commands) == 1, counted.commands
            assert len(counted.rsyncs) == 2, counted.rsyncs
            assert conn.read_text(layout.launcher) == launcher_path().read_text()
            for trainer in trainer_dir().glob("*.py"):
                remote = f"{layout.trainers_dir}/{trainer.name}"
                assert conn.read_text(remote) == trainer.read_text()
            assert conn.run_shell(f"ls -A {layout.trainers_dir}").stdout.split() == sorted(
                p.name for p in trainer_dir().glob("*.py"))
            listed = conn.run_shell(f"cd {layout.path('nnUNet_preprocessed', data.name)} && "
                                    "find . -type f").stdout.split()
            assert listed == ["./sub/case.b2nd"]


def test_job_files_reach_a_local_run_folder_too(tmp_path: Path) -> None:
    """The local scheduler's copy keeps to the two job files' entries of the package folder."""
    from hpcnn.remote.local import LocalConnection

    layout = RemoteLayout(str(tmp_path / "remote"))
    registry = Registry(tmp_path / "registry.sqlite")
    transfer.push(LocalConnection(), registry, layout, transfer.job_file_items(layout), run=None)
    lib = Path(layout.lib)
    assert sorted(p.name for p in lib.iterdir()) == [launcher_path().name, trainer_dir().name]
    assert (lib / launcher_path().name).read_bytes() == launcher_path().read_bytes()
    assert not any(p.name == "__pycache__" for p in lib.rglob("*"))
