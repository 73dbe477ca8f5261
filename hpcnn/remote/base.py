"""The Connection API: run a command, move files, on the cluster or on this machine.

Commands are argv lists, never strings: the connection quotes every part with ``shlex.quote``,
so names and paths with spaces, quotes or ``$(...)`` arrive as data. A remote command runs in the
configured login shell (``bash -lc`` by default) because on real clusters ``qsub``, ``module`` and
conda are often only on a login shell's PATH. One Connection serves a whole CLI invocation.
"""

from __future__ import annotations

import fnmatch
import posixpath
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from hpcnn.errors import RemoteCommandError

if TYPE_CHECKING:
    from hpcnn.remote.early_login import Hint
    from hpcnn.remote.kept_shell import KeptShell


@dataclass(frozen=True)
class Result:
    stdout: str
    stderr: str
    returncode: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def join_argv(argv: Sequence[str]) -> str:
    """One shell line from an argv, every part quoted."""
    return shlex.join([str(a) for a in argv])


def excluded(rel: str, patterns: Sequence[str]) -> bool:
    """rsync-like exclusion: a pattern matches the relative path or any one path component.
    Every transport (local copy, rsync, tar, SFTP) applies the same rule."""
    parts = rel.split("/")
    return any(fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(c, p) for c in parts)
               for p in patterns)


def in_members(rel: str, members: Sequence[str]) -> bool:
    """Whether the relative path ``rel`` lies in one of ``members`` (every path when none)."""
    return not members or rel.split("/", 1)[0] in members


def safe_relative(rel: str) -> str:
    """A relative POSIX path that stays below its root (no absolute path, no ``..``): names
    that come from the cluster (a listing, an archive) are untrusted."""
    norm = posixpath.normpath(rel)
    if norm.startswith(("/", "../")) or norm in ("..", "."):
        raise RemoteCommandError(f"refusing to copy a file named {rel!r}: it leaves its folder",
                                 returncode=1)
    return norm


PRIVATE_UMASK = "umask 077"
"""Every remote command starts with this: the cluster is shared with other accounts, and what
hpcnn writes there (patient images, job scripts with their variables, logs) is this
account's alone, whatever the cluster's default umask."""


PACKED = "__HPCNN_PACKED__"
"""The first line of a packed output (see packed_line): gzip, then base64, follows."""


def packed_line(line: str) -> str:
    """``line`` with its output compressed on the cluster (gzip, then base64 so that it stays
    text) when the cluster has both tools, else as it was. A poll of 100 queued jobs returns
    65 kB of ``qstat -f``, mostly the same attribute names over and over: packed it is a few
    kB and fits in the link's first TCP window, so a ``status --watch`` poll waits one round
    trip for its answer instead of three. ``unpacked`` reads both forms; the line's exit status
    is not kept (callers read their status from the output, as ``poll_with`` does)."""
    return (f"_hpcnn_body() {{ {line}; }}; if command -v gzip >/dev/null 2>&1 && "
            f"command -v base64 >/dev/null 2>&1; then echo {PACKED}; "
            f"_hpcnn_body | gzip -1 | base64; else _hpcnn_body; fi")


def unpacked(stdout: str) -> str:
    """The output of a ``packed_line`` as the line itself printed it; "" when a packed output
    came back cut short (the command was killed on the way): nothing of it can be trusted."""
    head, newline, body = stdout.partition("\n")
    if not newline or head.strip() != PACKED:
        return stdout
    import base64
    import zlib

    try:
        data = zlib.decompress(base64.b64decode(body), wbits=31)  # 31: gzip's framing
    except (ValueError, zlib.error):
        return ""
    return data.decode(errors="replace")


TIMED_OUT = 124
"""A command that ran past its timeout returns this status, like timeout(1)."""

LONG_LINE = 32 * 1024
"""Bytes of a command line above which it travels on stdin (see Connection.run_shell)."""


def login_wrap(login_shell: str, command_line: str) -> str:
    """``bash -lc 'umask 077; LINE'``: the command line as one quoted argument of the login
    shell (the one place a remote command line is built, so every command gets the umask)."""
    line = f"{PRIVATE_UMASK}; {command_line}"
    return f"{login_shell} {shlex.quote(line)}" if login_shell else line


class Connection(ABC):
    """Runs commands and moves files where the jobs run."""

    #: A human description for messages, e.g. ``hpcuser@cluster:22`` or ``this machine``.
    description: str
    #: Whether large outputs come back packed (``packed_line``): worth it across a network.
    packs_output: bool = True

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - most connections have nothing to release
        """Release the underlying connection."""

    _keeps_shell = False
    _kept: KeptShell | None = None

    def keep_shell(self) -> None:
        """Run the commands that follow (those with no stdin) in one remote shell kept open
        (kept_shell.py): one round trip each instead of two, for a caller that polls the
        cluster again and again on one connection (``status --watch``). A transport that
        cannot keep one runs them as before."""
        self._keeps_shell = True

    def _open_shell(self) -> KeptShell | None:
        """A new kept shell on this connection; None where the transport has none."""
        return None

    def _run_kept(self, line: str, timeout: float | None) -> Result:
        from hpcnn.errors import ConnectionFailed
        from hpcnn.remote.kept_shell import ShellLost, ShellTimedOut

        if self._kept is None:
            self._kept = self._open_shell()
            if self._kept is None:
                self._keeps_shell = False
                return self._run(line, stdin=None, timeout=timeout)
        try:
            return Result(*self._kept.run(line, timeout))
        except ShellTimedOut as exc:  # closed: the next command opens a new one
            self._kept = None
            return Result(exc.args[0], f"timed out after {timeout:g} s", TIMED_OUT)
        except ShellLost as exc:
            lost, self._kept = self._kept, None
            self._shell_lost(lost)
            raise ConnectionFailed(f"the connection to {self.description} ended during a "
                                   f"command ({exc})",
                                   hint="check the network, then run the command again") from exc

    def _shell_lost(self, shell: KeptShell) -> None:  # noqa: B027 - nothing more to say
        """Raise what the transport knows of why ``shell`` ended (a dropped connection)."""

    def _close_kept(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def start(self, hint: Hint | None = None) -> None:  # noqa: B027 - most log in on first use
        """Begin logging in now, in the background, so that the login's round trips overlap
        what the command still has to load before its first remote command (which waits for
        the login). A failed login is reported by that first command. ``hint``: where a
        transport that can begin its login before the imports (early_login.py) files how."""

    def transfer_probe(self) -> str:
        """A shell snippet that tells how this connection will move files (e.g. whether the
        cluster has rsync), for a caller to run inside a command it runs anyway, so that the
        question costs no round trip of its own; "" when there is nothing to ask."""
        return ""

    def transfer_probed(self, stdout: str) -> None:  # noqa: B027 - nothing to learn here
        """Learn from the output of a command that ran ``transfer_probe()``."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        cwd: str | None = None,
        stdin: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run ``argv`` (each part quoted). ``check`` raises RemoteCommandError on non-zero exit."""
        line = join_argv(argv)
        if cwd:
            line = f"cd {shlex.quote(cwd)} && {line}"
        return self.run_shell(line, check=check, stdin=stdin, timeout=timeout)

    def run_shell(
        self, line: str, *, check: bool = True, stdin: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        """Run a shell line built by hpcnn (callers quote every variable part themselves).

        A line longer than LONG_LINE goes to the same shell on stdin instead of as an
        argument (a status of a few hundred jobs is): Linux refuses a single argument over
        128 KiB, on the ssh command line here or in sshd's ``sh -c`` there."""
        if stdin is None and len(line.encode()) > LONG_LINE:
            result = self._run('eval "$(cat)"', stdin=line, timeout=timeout)
        elif stdin is None and self._keeps_shell:
            result = self._run_kept(line, timeout)
        else:
            result = self._run(line, stdin=stdin, timeout=timeout)
        if check and not result.ok:
            raise RemoteCommandError(
                f"command failed on {self.description} (exit {result.returncode}): {line}\n"
                + (result.stderr.strip() or result.stdout.strip()),
                returncode=result.returncode,
                stdout=result.stdout,
                stderr=result.stderr,
            )
        return result

    @abstractmethod
    def _run(self, line: str, *, stdin: str | None, timeout: float | None) -> Result:
        """Run one shell line in the login shell and collect its output."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote`` atomically (temp name, then rename)."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a remote file to ``local`` atomically."""

    def fetch_files(self, remote: str, local: Path, files: Sequence[str],
                    on_file: Callable[[str], None] | None = None) -> None:
        """Copy ``files`` (relative paths) from ``remote`` to ``local``, each atomically and
        keeping its mtime; ``on_file(rel)`` once each has landed. One file at a time here;
        a transport that can move them all in one round trip does."""
        for rel in files:
            self.get(f"{remote}/{rel}", Path(local) / safe_relative(rel))
            if on_file is not None:
                on_file(rel)

    @abstractmethod
    def push_tree(self, local: Path, remote: str, *, exclude: Sequence[str] = (),
                  members: Sequence[str] = ()) -> None:
        """Make ``remote`` hold every file of the folder ``local`` (incremental, never deletes).

        ``exclude`` holds rsync-style patterns (``*.tmp``, ``fold_*/validation``); ``members``
        limits the push to those entries of ``local`` (files or folders, same names there).
        """

    @abstractmethod
    def pull_tree(self, remote: str, local: Path, *, exclude: Sequence[str] = ()) -> None:
        """Make ``local`` hold every file of the remote folder (incremental, never deletes)."""

    def write_text(self, remote: str, text: str, *, mode: int = 0o600) -> None:
        """Write a small remote file atomically (temp + rename), creating its folder; by default
        readable by the account only."""
        parent = str(Path(remote).parent)
        tmp = f"{remote}.tmp-hpcnn"
        line = (
            f"mkdir -p {shlex.quote(parent)} && cat > {shlex.quote(tmp)} && "
            f"chmod {mode:o} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(remote)}"
        )
        self.run_shell(line, stdin=text)

    def read_text(self, remote: str) -> str | None:
        """A small remote file's text, or None when it does not exist."""
        res = self.run_shell(
            f"test -e {shlex.quote(remote)} || exit 44; cat {shlex.quote(remote)}", check=False
        )
        if res.returncode == 44:
            return None
        if not res.ok:
            raise RemoteCommandError(
                f"cannot read {remote} on {self.description}: {res.stderr.strip()}",
                returncode=res.returncode, stdout=res.stdout, stderr=res.stderr,
            )
        return res.stdout
