"""A tiny benchmark harness: time commands or callables in the same run, print ratios.

Machines here are shared and noisy, so every figure is a ratio against a baseline measured in
the same run, interleaved (baseline, candidate, baseline, ...) and summarised by the median.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_command(argv: Sequence[str], **kwargs: object) -> float:
    return time_call(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, **kwargs))


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
