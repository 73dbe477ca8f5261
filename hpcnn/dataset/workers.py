"""Worker processes for ``hpcnn dataset import`` and ``check``: one SimpleITK thread each, since
the parallelism comes from the cases, and progress reported in this process as cases finish."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

Progress = Callable[[str, int, int], None]
"""``on_progress(phase, done, total)``, called in this process as cases finish (the CLI draws
the bar)."""

T = TypeVar("T")
R = TypeVar("R")


def available_cpus() -> int:
    """Cores this process may use (the job's allocation on a cluster node, not the node's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, capped by a cgroup (job) limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


@contextmanager
def runner(workers: int, on_progress: Progress | None) -> Iterator[Callable[..., list[Any]]]:
    """A ``run(phase, fn, tasks) -> results in task order`` over a process pool (or inline, in
    this process with the same single SimpleITK thread, so timings compare)."""
    pool = None
    threads = None
    if workers > 1:
        import SimpleITK  # noqa: F401  (loaded once here: forked workers inherit it)

        pool = process_pool(workers)
    else:
        import SimpleITK as sitk

        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        pin_simpleitk_threads()

    def run(phase: str, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        results: list[Any] = [None] * len(tasks)
        if on_progress:
            on_progress(phase, 0, len(tasks))
        if pool is None:
            for i, task in enumerate(tasks):
                results[i] = fn(task)
                if on_progress:
                    on_progress(phase, i + 1, len(tasks))
            return results
        futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if on_progress:
                on_progress(phase, done, len(tasks))
        return results

    try:
        yield run
    except BaseException:
        if pool is not None:
            # Workers ignore Ctrl-C (interrupt.py) and may be deep in a large case: stop them
            # now rather than wait. The executor has no public way to (Python 3.14 adds one).
            for process in list((pool._processes or {}).values()):
                process.kill()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        else:
            import SimpleITK as sitk

            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes with one SimpleITK thread each (parallelism comes from the cases).

    On Linux, a process that runs no other thread forks its workers: they start at once and
    inherit nothing half-locked. Elsewhere, or with other threads running (a notebook, a
    progress bar that refreshes itself), they are spawned, which costs each worker a few tenths
    of a second to import numpy and SimpleITK again.
    """
    import multiprocessing
    import sys
    import threading

    single = sys.platform.startswith("linux") and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if single else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker)


def _start_worker() -> None:
    from hpcnn.dataset.interrupt import ignore_in_worker

    ignore_in_worker()
    pin_simpleitk_threads()


def pin_simpleitk_threads() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
