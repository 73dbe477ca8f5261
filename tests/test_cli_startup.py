"""The CLI start-up path stays light: ``hpcnn --help`` must not import the heavy libraries
(bench/cold_start.py measures the time; this test pins the cause)."""

from __future__ import annotations

import ast
import subprocess
import sys

HEAVY = ["pydantic", "rich", "jinja2", "yaml", "fabric", "paramiko", "SimpleITK", "torch",
         "numpy", "nnunetv2", "matplotlib"]
LIGHT = {"hpcnn", "hpcnn.cli", "hpcnn.errors", "hpcnn.units", "hpcnn.remote",
         "hpcnn.remote.defaults", "hpcnn.formats",
         *(f"hpcnn.formats.{m}" for m in ("nifti", "nrrd", "slicer_seg", "metaimage", "segment",
                                           "dicom_series", "dicom_seg", "rtstruct"))}
"""The hpcnn modules ``--help`` may load besides the command modules (hpcnn.cli.*): no
transport, no login machinery (hpcnn.remote.login_master brought hashlib and inspect: a third of
what hpcnn added to Click's start-up). The format registry and its format declarations are
data (the ``--format`` choices); their readers import pydicom and SimpleITK only when called."""


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['hpcnn', '--help']\n"
        "from hpcnn.cli.entry import main\n"  # the console script's own path
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "finally:\n"
        f"    print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "    print(sorted(m for m in sys.modules if m.startswith('hpcnn')\n"
        "                 and not m.startswith('hpcnn.cli.')))\n"
        "    print(sorted(m for m in ('hashlib', 'json', 'socket') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: hpcnn" in out.stdout
    heavy, hpcnn, stdlib = out.stdout.strip().splitlines()[-3:]
    assert heavy == "[]"
    assert set(ast.literal_eval(hpcnn)) <= LIGHT, hpcnn
    assert stdlib == "[]"


def test_every_command_has_help() -> None:
    from hpcnn.cli.main import cli

    for name, command in cli.commands.items():
        assert command.help or command.short_help, name
