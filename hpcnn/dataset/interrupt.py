"""Ctrl-C, SIGTERM and SIGHUP (a dropped SSH session) during a dataset command.

Python turns only SIGINT into an exception, and Click turns that into "aborted" (exit 1); SIGTERM
and SIGHUP kill the process at once, so nothing cleans up. Inside ``signals_raise()`` each of the
three raises ``Interrupted`` instead: ``finally`` blocks remove temporary folders, the command
says which dataset is in place, and the exit code is the shell's 128 + signal (130 for Ctrl-C).
``deferred()`` holds the signals over a few steps that must not be split (the renames that swap
a dataset), and ``ignore_in_worker()`` keeps worker processes out of it: the parent stops them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from hpcnn.errors import HpcnnError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Interrupted(HpcnnError):
    """A signal stopped the command; the message says what state it left."""

    def __init__(self, signum: int, message: str = "", *, hint: str | None = None) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted ({_NAMES.get(signum, signal.Signals(signum).name)})"
                         + (f": {message}" if message else ""), hint=hint)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` while inside (main thread only: Python
    runs signal handlers there and nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block is done, then deliver the first one to the
    handler that was there before (a second signal changes nothing: SIGKILL still works)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous: dict[int, Any] = {s: signal.signal(s, hold) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if held:
        signal.raise_signal(held[0])


def ignore_in_worker() -> None:
    """For worker processes: the terminal sends Ctrl-C (and a dropped session SIGHUP) to every
    process of the command; the parent decides and stops its workers itself."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
