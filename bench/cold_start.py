"""``hpcnn --help`` cold start vs ``python -c "import click"`` (goal: at most 1.5x).

Run: python bench/cold_start.py [--repeats N] [--installed]. Both run as whole, fresh
interpreter processes of the same Python (interleaved, medians); the ratio shows what hpcnn
adds on top of Click on the CLI's start-up path.

hpcnn is timed as users install it: by default this tree is installed (``pip install
--no-deps .``, a plain, non-editable install: an editable one adds an import hook) into a
throwaway venv that sees this interpreter's packages (Click, and the ``nnunet`` extra's
packages: whatever they install that runs at start-up, .pth files included, runs here too), and
its console script is timed. ``--installed`` times the ``hpcnn`` script beside this interpreter
instead.
"""

from __future__ import annotations

import argparse
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import compare, goal, load_average, report, time_command  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def scratch_install(folder: Path) -> Path:
    """A venv in ``folder`` with this tree installed as a user installs it, seeing this
    interpreter's site-packages (a .pth line adds them as a site dir, their .pth files run);
    returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()] or \
        [sysconfig.get_paths()["purelib"]]
    Path(purelib, "zz_base_packages.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                   check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--installed", action="store_true",
                        help="time the hpcnn beside this interpreter, not this tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcnn-cold-") as tmp:
        py = Path(sys.executable) if args.installed else scratch_install(Path(tmp, "venv"))
        script = py.parent / "hpcnn"  # the console script a user runs
        hpcnn = [str(script)] if script.exists() else [str(py), "-m", "hpcnn.cli.main"]
        b, c, ratio = compare(
            lambda: time_command([str(py), "-c", "import click"]),
            lambda: time_command([*hpcnn, "--help"]),
            repeats=args.repeats,
        )
    report("hpcnn --help", "import click", b, c, ratio, goal=goal(ratio, 1.5))
    print(f"  ({'installed' if args.installed else 'this tree, pip-installed'}: hpcnn --help, "
          f"{args.repeats} interleaved runs, medians; {load_average()})")


if __name__ == "__main__":
    main()
