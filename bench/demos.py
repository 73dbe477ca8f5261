"""``hpcnn demo``, ``hpcnn demo --method`` and ``hpcnn demo --dicom`` end to end, in one run:
the wall time of each, its ratio to the default demo's, the winner find-best chose and the
held-back Dice of each; optionally the default demo of another checkout as a baseline.

Goals: the method demo (issue 20, item 7: 2d + 3d_fullres, two folds each, find-best, the
prediction with what won) within 10 minutes on two cores, printing the winner and its Dice; the
default demo unchanged and not slower (``--baseline /path/to/another/checkout`` runs that
checkout's default demo in the same run); the DICOM demo (issue 21, item 4) as long as the
default one plus its DICOM writing and reading. Too long for CI (the default demo alone is its
slowest test), so they live here; tests/test_demo_parts.py tests their parts.

Run: python bench/demos.py [--out /tmp/hpcnn-bench-demos] [--only method,dicom,default]
                           [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"dicom": ("--dicom",), "method": ("--method",), "default": ()}
DICE = re.compile(r"mean foreground Dice on \d+ held-back cases: (\S+)")


def run_demo(folder: Path, *extra: str, checkout: Path | None = None) -> tuple[float, str]:
    """Seconds ``hpcnn demo FOLDER [extra]`` took (``checkout``'s hpcnn when given), and its
    output (an error on failure)."""
    env = {**os.environ, "HPCNN_LOCALQ_DIR": str(folder.parent / f"{folder.name}-queue")}
    env.pop("HPCNN_CONFIG", None)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout.resolve())
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "hpcnn.cli.main", "demo", str(folder), *extra],
                         env=env, capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    (folder.parent / f"{folder.name}.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"hpcnn demo {' '.join(extra)} exited {res.returncode}:\n"
                         f"{(res.stdout + res.stderr)[-4000:]}")
    return seconds, res.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/hpcnn-bench-demos"))
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help="comma-separated variants to run, of: " + ", ".join(VARIANTS))
    parser.add_argument("--baseline", type=Path,
                        help="another checkout whose default demo runs last, for the ratio")
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if v in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    seconds: dict[str, float] = {}
    for variant in chosen:
        seconds[variant], out = run_demo(args.out / variant, *VARIANTS[variant])
        found = DICE.search(out)
        print(f"demo {' '.join(VARIANTS[variant])}".rstrip() + f": {seconds[variant]:.0f} s, "
              f"held-back Dice {found[1] if found else 'not printed'}", flush=True)
        if variant == "method":
            winner = re.search(r"^ *(find-best chose .*)", out, re.MULTILINE)
            print(f"  {winner[1] if winner else 'no winner printed'}", flush=True)
    if args.baseline:
        seconds["baseline"], out = run_demo(args.out / "baseline", checkout=args.baseline)
        found = DICE.search(out)
        print(f"demo of {args.baseline}: {seconds['baseline']:.0f} s, held-back Dice "
              f"{found[1] if found else 'not printed'}", flush=True)
    for variant in chosen:
        if variant != "default" and "default" in seconds:
            print(f"{variant} / default = {seconds[variant] / seconds['default']:.2f}x")
    if "baseline" in seconds and "default" in seconds:
        print(f"default / baseline's default = {seconds['default'] / seconds['baseline']:.2f}x")
    if "method" in seconds:
        print(f"method demo within 600 s: {'yes' if seconds['method'] <= 600 else 'NO'}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
