"""Shared fixtures. Under CI (``HPCNN_REQUIRE_TESTBED=1``) a missing test bed or nnunetv2 is a
failure, never a skip: ``need()`` below is the one place that decides."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("HPCNN_REQUIRE_TESTBED") == "1"


def need(condition: bool, what: str) -> None:
    """Skip (locally) or fail (under CI) when ``condition`` is false."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"HPCNN_REQUIRE_TESTBED=1 but {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def nnunet_available() -> None:
    """Use in tests that run nnU-Net itself."""
    need(importlib.util.find_spec("nnunetv2") is not None, "nnunetv2 is not installed")


@pytest.fixture(scope="session")
def sitk_available() -> None:
    need(importlib.util.find_spec("SimpleITK") is not None, "SimpleITK is not installed")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace folder as the current directory, no cluster.yaml: the local default."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.delenv("HPCNN_CONFIG", raising=False)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    return ws


@pytest.fixture
def hpcnn(capsys: pytest.CaptureFixture[str]):
    """Run the CLI in-process as a user would: returns (exit code, stdout, stderr)."""
    from hpcnn.cli.common import run_cli
    from hpcnn.cli.main import cli

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(cli, [str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
