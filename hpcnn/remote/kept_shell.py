"""One remote shell kept open for a series of commands (``status --watch``'s polls): each
command then waits one round trip of the link instead of two.

On an open SSH connection a command still opens a channel (one round trip) before it runs its
line and waits for the answer (a second). A ``--watch`` that polls every 30 s for hours pays
that first round trip every time. Here one channel stays open with a plain ``sh`` reading
command lines on its standard input, and a command is one write and one read. Each command
still runs as it would alone: through the configured login shell (as ``login_wrap`` builds
it), in a subshell of its own (its ``exit``, ``cd`` and variables end with it), with no
standard input, its stdout, stderr and exit status kept apart. The answer is framed by a
random marker nothing on the cluster can know (``printf`` is a shell builtin there: the marker
is in no process's argv). Anything unexpected (the shell gone, a timeout, a frame that does
not parse) ends the shell; the caller opens a new one for its next command.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Protocol

DISPATCHER = "exec sh -s"
"""The channel's own command: a POSIX shell reading the framed command lines."""


class Pipe(Protocol):
    """The kept channel as bytes both ways (an ``ssh`` process's pipes, a paramiko channel)."""

    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float | None) -> bytes:
        """The next bytes; b"" once the shell is gone; TimeoutError past ``timeout``."""
        ...

    def close(self) -> None: ...


class ShellLost(Exception):
    """The kept shell ended or answered out of frame: the command's outcome is unknown."""


class ShellTimedOut(Exception):
    """No whole answer within the timeout (the shell is then closed); ``args[0]``: the output
    that came."""


class KeptShell:
    def __init__(self, pipe: Pipe, wrap: Callable[[str], str]) -> None:
        """``wrap``: the transport's login_wrap, so that a command runs as it would alone."""
        self.pipe = pipe
        self._wrap = wrap
        self._marker = secrets.token_hex(16).encode()
        self.closed = False

    def run(self, line: str, timeout: float | None) -> tuple[str, str, int]:
        """Run ``line``: (stdout, stderr, exit status). ShellLost when no whole answer came
        back, ShellTimedOut past ``timeout`` (the shell is then closed)."""
        marker = self._marker.decode()
        # The command's stderr and then its exit status are captured (the status last, so
        # that the capture keeps the stderr's own trailing newlines); its stdout streams.
        request = ("{ _hpcnn_err=$( { " + self._wrap(line) + "\n} </dev/null 2>&1 1>&3 3>&-; "
                   "printf '\\n%s' \"$?\" ); } 3>&1; "
                   f"printf '\\n%s %s\\n%s\\n' {marker} \"$_hpcnn_err\" {marker}\n")
        start = f"\n{marker} ".encode()
        end = f"\n{marker}\n".encode()
        deadline = None if timeout is None else time.monotonic() + timeout
        data = bytearray()
        try:
            self.pipe.send(request.encode())
            while not (data.endswith(end) and start in data):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                chunk = self.pipe.recv(left)
                if not chunk:
                    raise ShellLost("the kept shell ended")
                data += chunk
        except TimeoutError:
            self.close()
            raise ShellTimedOut(bytes(data).decode(errors="replace")) from None
        except (OSError, ShellLost) as exc:
            self.close()
            raise ShellLost(str(exc)) from exc
        stdout, _, rest = bytes(data).partition(start)
        stderr, _, code = rest[:-len(end)].rpartition(b"\n")
        try:
            returncode = int(code)
        except ValueError as exc:
            self.close()
            raise ShellLost(f"an answer out of frame: {code[:40]!r}") from exc
        return stdout.decode(errors="replace"), stderr.decode(errors="replace"), returncode

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pipe.close()
