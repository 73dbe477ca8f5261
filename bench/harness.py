"""A tiny benchmark harness: time commands or callables in the same run, print ratios.

Machines here are shared and noisy, so every figure is a ratio against a baseline measured in
the same run, interleaved (baseline, candidate, baseline, ...) and summarised by the median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Collection, Sequence


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_command(argv: Sequence[str], ok: Collection[int] = (0,), **kwargs: object) -> float:
    """Seconds ``argv`` took; an exit status outside ``ok`` is an error (hpcnn's status codes
    say "still running" with 10, which is a success for a benchmark)."""
    def run() -> None:
        res = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, **kwargs)
        if res.returncode not in ok:
            raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: "
                               f"{res.stderr.decode(errors='replace')[-500:]}")

    return time_call(run)


def compare(
    baseline: Callable[[], float],
    candidate: Callable[[], float],
    *,
    repeats: int = 15,
    warmup: int = 2,
) -> tuple[float, float, float]:
    """Median seconds of baseline and candidate (interleaved), and candidate / baseline."""
    for _ in range(warmup):
        baseline()
        candidate()
    base, cand = [], []
    for _ in range(repeats):
        base.append(baseline())
        cand.append(candidate())
    b, c = statistics.median(base), statistics.median(cand)
    return b, c, c / b


def report(name: str, baseline_name: str, b: float, c: float, ratio: float,
           goal: str | None = None) -> None:
    line = f"{name}: {c * 1000:.1f} ms vs {baseline_name}: {b * 1000:.1f} ms -> ratio {ratio:.2f}x"
    if goal:
        line += f" (goal {goal})"
    print(line)


def goal(ratio: float, limit: float) -> str:
    """``<= 1.3x: PASS`` or ``<= 1.3x: MISS``, for report's ``goal``."""
    return f"<= {limit:g}x: {'PASS' if ratio <= limit else 'MISS'}"


def load_average() -> str:
    """The machine's load while a benchmark ran: shared machines make every absolute figure
    noisy, and this says how noisy."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
