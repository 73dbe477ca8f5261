"""``hpcnn --help`` cold start vs ``python -c "import click"`` (goal: at most 1.5x).

Run: python bench/cold_start.py [--repeats N]. Both run as fresh interpreter processes of the
same Python; the ratio shows what hpcnn adds on top of Click on the CLI's start-up path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import compare, report, time_command  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    py = sys.executable
    script = Path(py).parent / "hpcnn"  # the console script a user runs
    hpcnn = [str(script)] if script.exists() else [py, "-m", "hpcnn.cli.main"]
    b, c, ratio = compare(
        lambda: time_command([py, "-c", "import click"]),
        lambda: time_command([*hpcnn, "--help"]),
        repeats=args.repeats,
    )
    report("hpcnn --help", "import click", b, c, ratio, goal="<= 1.5x")
    print(f"  ({' '.join(hpcnn)} --help, {args.repeats} interleaved runs, medians)")


if __name__ == "__main__":
    main()
