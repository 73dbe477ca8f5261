"""Issue 8 item 2: an import stopped by Ctrl-C, SIGTERM or SIGHUP (a dropped SSH session) cleans
up and says which dataset is in place; what a SIGKILL leaves is found by the next command.

Real processes and real signals: the CLI runs as a subprocess in its own session, and Ctrl-C and
SIGHUP go to the whole process group (as a terminal and sshd send them), SIGTERM to hpcnn alone
(as ``kill`` does). The source is large enough that the import is still writing when the signal
comes (the hidden .importing- folder is the sign that it is)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import synthetic
from synthetic import Grid
from test_dataset_import import run_import

from hpcnn.dataset import leftovers
from hpcnn.dataset.importer import ImportResult

pytestmark = pytest.mark.usefixtures("sitk_available")
NAME = "Dataset501_Sig"


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 cases of 1.5 M voxels as uncompressed .mha: converting them to gzip NRRD takes a few
    seconds, time enough to interrupt."""
    folder = tmp_path_factory.mktemp("big")
    grid = Grid((128, 128, 96), (1.0, 1.0, 1.0))
    masks = synthetic.organ_masks(grid)
    label = grid.zeros(np.uint8)
    label[masks["liver"]], label[masks["tumor"]] = 1, 2
    rng = np.random.default_rng(0)
    for i in range(24):
        synthetic.write_image(folder / f"case{i:02d}.mha", synthetic.ct_image(grid, masks, rng),
                              grid, compress=False)
        synthetic.write_image(folder / f"case{i:02d}_label.mha", label, grid, compress=False)
    return folder


def _imported(workspace: Path) -> ImportResult:
    """Dataset501_Sig of three small cases from ``workspace/src``, imported in this process."""
    source = workspace / "src"
    for key in ("a", "b", "c"):
        synthetic.labelled_case(source, key)
    return run_import(workspace, source, name="Sig")


def _start(workspace: Path, source: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hpcnn.cli.entry", "dataset", "import",
                             str(source), "--name", "Sig", "--format", "nrrd", *args],
                            cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _writing(proc: subprocess.Popen[str], raw: Path, timeout: float = 120) -> Path:
    """The import's hidden folder, once it is writing into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(raw.glob(f".{NAME}.importing-*"))
        if found and any(found[0].glob("imagesTr/*")):
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the import never started writing")


def _gone(pgid: int, timeout: float = 10) -> bool:
    """Whether every process of the group (hpcnn and its workers) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("signum, to_group, code", [
    (signal.SIGINT, True, 130), (signal.SIGHUP, True, 129), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c", "sighup", "sigterm"])
def test_a_signal_removes_the_temporary_folder_and_says_what_is_in_place(
    workspace: Path, big_source: Path, signum: int, to_group: bool, code: int
) -> None:
    raw = workspace / "nnUNet_raw"
    proc = _start(workspace, big_source, "-j", "2")
    _writing(proc, raw)
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    name = {signal.SIGINT: "Ctrl-C", signal.SIGHUP: "SIGHUP", signal.SIGTERM: "SIGTERM"}[signum]
    assert f"error: interrupted ({name}): nothing was imported; there is no {NAME}" in err
    assert "Traceback" not in err and "aborted" not in err
    assert list(raw.iterdir()) == []
    assert _gone(proc.pid), "worker processes outlived the import"


def test_ctrl_c_during_a_forced_import_keeps_the_previous_dataset(
    workspace: Path, big_source: Path
) -> None:
    before = _imported(workspace)
    snapshot = _snapshot(before.path)
    proc = _start(workspace, big_source, "-j", "1", "--force")
    _writing(proc, workspace / "nnUNet_raw")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"nothing was imported; {NAME} is unchanged" in err
    assert [p.name for p in (workspace / "nnUNet_raw").iterdir()] == [NAME]
    assert _snapshot(before.path) == snapshot


def test_ctrl_c_after_the_swap_says_the_new_dataset_is_in_place(
    workspace: Path, hpcnn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last moment of a --force import: the signal arrives while the new dataset is moved
    into place (held until both renames are done), so the new dataset stays and says so."""
    from hpcnn.dataset import importer

    _imported(workspace)
    source = workspace / "src"
    synthetic.labelled_case(source, "d")
    real = importer._move_into_place

    def swap_then_ctrl_c(*args: object) -> Path:
        signal.raise_signal(signal.SIGINT)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "_move_into_place", swap_then_ctrl_c)
    code, out, err = hpcnn("dataset", "import", source, "--name", "Sig", "-j", "1", "--force")
    assert code == 130
    assert (f"interrupted (Ctrl-C): the new {NAME} (4 cases) was already in place and is kept; "
            f"it replaced {NAME}") in err
    raw = workspace / "nnUNet_raw"
    assert [p.name for p in raw.iterdir()] == [NAME]
    assert len(list((raw / NAME / "imagesTr").iterdir())) == 4


def test_what_a_sigkill_leaves_is_removed_by_the_next_command(
    workspace: Path, big_source: Path, hpcnn
) -> None:
    _imported(workspace)
    raw = workspace / "nnUNet_raw"
    proc = _start(workspace, big_source, "-j", "2", "--force")
    left = _writing(proc, raw)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _gone(proc.pid) and left.is_dir()

    code, out, err = hpcnn("dataset", "check", "Sig")
    assert f"{left.name}: removed (" in out
    assert f"left by an import that was killed (process {proc.pid})" in out
    assert sorted(p.name for p in raw.iterdir()) == [NAME]


def test_a_dataset_moved_aside_by_a_killed_import_is_put_back_and_others_reported(
    workspace: Path, hpcnn
) -> None:
    result = _imported(workspace)
    snapshot = _snapshot(result.path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = leftovers.work_folder(result.path, leftovers.REPLACED)
    aside = aside.with_name(aside.name.replace(f"-{os.getpid()}-", f"-{dead.pid}-"))
    result.path.rename(aside)  # as a SIGKILL between the two renames of a --force import leaves it
    other = result.path.parent / f".{NAME}.importing-otherhost-123-0123abcd"
    other.mkdir()
    code, out, err = hpcnn("preprocess", "Sig")
    assert f"{NAME}: put back: an import killed while replacing it had moved it aside" in out
    assert "left by an import on otherhost" in out and f"rm -rf {other}" in out
    assert _snapshot(result.path) == snapshot and other.is_dir() and not aside.exists()
