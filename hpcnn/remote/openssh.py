"""The cluster through the system ``ssh``: all of ~/.ssh/config, one master connection.

Every command of one hpcnn invocation rides ONE ssh ControlMaster connection (socket in a
private 0700 temp folder, closed in close()), so a 2FA login is typed once, and rsync rides it
too. When the user's ssh config already sets ControlMaster, that is honoured instead (their
master may outlive hpcnn, which is how cron jobs reuse a morning's 2FA login). Output goes
to temporary files, not pipes: a master that backgrounds itself can hold inherited pipes open,
and reading them would wait for it to exit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hpcnn.errors import ConnectionFailed, RemoteCommandError
from hpcnn.remote.base import Result, login_wrap
from hpcnn.remote.ssh_common import (
    TIMED_OUT,
    Failure,
    SshConnection,
    Target,
    atomic_local_target,
    classify_ssh_stderr,
    failure,
    offered_fingerprints,
    safe_relative,
    ssh_options,
)

if TYPE_CHECKING:
    from hpcnn.config import ClusterSection

CONTROL_PERSIST_S = 60
"""How long an idle master of ours outlives a crashed hpcnn (close() ends it at once)."""


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


class OpenSSHConnection(SshConnection):
    def __init__(self, cluster: ClusterSection) -> None:
        if not shutil.which("ssh"):
            raise ConnectionFailed("the ssh client is not installed here",
                                   hint="install OpenSSH, or set cluster.ssh: fabric")
        self.cluster = cluster
        self.host = cluster.host or ""
        self._options = ssh_options(cluster, batch=not sys.stdin.isatty())
        settings = self._effective_config()
        self.target = Target(settings.get("hostname", self.host), int(settings.get("port", 22)),
                             settings.get("user", ""), settings.get("proxyjump", ""))
        self.description = str(self.target)
        self.known_hosts_file = os.path.expanduser(
            settings.get("userknownhostsfile", "~/.ssh/known_hosts").split()[0])
        self._control_dir: str | None = None
        self._mux: list[str] = []
        if settings.get("controlmaster", "false") in ("false", "no"):
            # /tmp, not $TMPDIR: macOS's long TMPDIR can exceed the socket path limit (104).
            self._control_dir = tempfile.mkdtemp(prefix="hpcnn-ssh-",
                                                 dir="/tmp" if os.path.isdir("/tmp") else None)
            self._mux = ["-o", "ControlMaster=auto",
                         "-o", f"ControlPath={self._control_dir}/master",
                         "-o", f"ControlPersist={CONTROL_PERSIST_S}"]

    def _effective_config(self) -> dict[str, str]:
        """``ssh -G``: what ssh will use for this host after all config files (no network)."""
        proc = subprocess.run(["ssh", "-G", *self._options, self.host], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=30, check=False)
        if proc.returncode != 0:
            raise ConnectionFailed(f"ssh cannot use its configuration for {self.host}: "
                                   f"{proc.stderr.strip()}",
                                   hint="fix the ssh config file it names")
        settings: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            key, _, value = line.partition(" ")
            settings.setdefault(key.lower(), value)
        return settings

    def _ssh(self, remote_line: str, *, stdin: IO[bytes] | int | None, stdout: IO[bytes],
             timeout: float | None = None) -> tuple[int, str]:
        """Run one remote command line through the master; (exit status, stderr).

        Exit 255 with ssh's own words on stderr is a connection failure, raised here.
        """
        argv = ["ssh", *self._options, *self._mux, "-T", self.host, remote_line]
        with tempfile.TemporaryFile() as err:
            try:
                code = subprocess.run(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                      stdout=stdout, stderr=err, timeout=timeout,
                                      check=False).returncode
            except subprocess.TimeoutExpired:
                return TIMED_OUT, f"timed out after {timeout:g} s"
            stderr = _read(err)
        found = classify_ssh_stderr(stderr) if code == 255 else None
        if found:
            kind, line = found
            if kind == Failure.HOSTKEY_UNKNOWN:
                line = offered_fingerprints(self.target, self.cluster.connect_timeout)
            raise failure(kind, self.target, line, timeout=self.cluster.connect_timeout)
        return code, stderr

    def _run(self, line: str, *, stdin: str | None, timeout: float | None) -> Result:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as given:
            given.write((stdin or "").encode())
            given.seek(0)
            code, stderr = self._ssh(login_wrap(self.cluster.login_shell, line),
                                     stdin=given, stdout=out, timeout=timeout)
            return Result(_read(out), stderr, code)

    def put(self, local: Path, remote: str) -> None:
        parent, tmp = os.path.dirname(remote) or ".", f"{remote}.tmp-hpcnn"
        q = shlex.quote
        line = (f"mkdir -p {q(parent)} && {{ cat > {q(tmp)} && mv -f {q(tmp)} {q(remote)}; }} "
                f"|| {{ rm -f {q(tmp)}; exit 1; }}")
        with open(local, "rb") as source, tempfile.TemporaryFile() as out:
            code, stderr = self._ssh(login_wrap("sh -c", line), stdin=source, stdout=out)
        if code != 0:
            raise RemoteCommandError(f"cannot write {remote} on {self.description}: "
                                     f"{stderr.strip()}", returncode=code, stderr=stderr)

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        tmp = atomic_local_target(local)
        try:
            with open(tmp, "wb") as sink:
                code, stderr = self._ssh(login_wrap("sh -c", f"cat {shlex.quote(remote)}"),
                                         stdin=None, stdout=sink)
            if code != 0:
                raise RemoteCommandError(f"cannot read {remote} on {self.description}: "
                                         f"{stderr.strip()}", returncode=code, stderr=stderr)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def rsync_ssh_command(self) -> list[str]:
        return ["ssh", *self._options, *self._mux]

    def rsync_destination(self) -> str:
        return self.host

    def send_files(self, local: Path, remote: str, files: Sequence[str]) -> None:
        """tar over the master: GNU tar on the cluster restores the mtimes, so the next push
        compares equal; files are replaced in place (rsync, when present, avoids that)."""
        line = f"mkdir -p {shlex.quote(remote)} && tar -C {shlex.quote(remote)} -xf -"
        with tempfile.TemporaryFile() as archive, tempfile.TemporaryFile() as out:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                for rel in files:
                    tar.add(local / rel, arcname=rel, recursive=False)
            archive.seek(0)
            code, stderr = self._ssh(login_wrap("sh -c", line), stdin=archive, stdout=out)
        if code != 0:
            raise RemoteCommandError(f"copy to {remote} on {self.description} failed: "
                                     f"{stderr.strip()}", returncode=code, stderr=stderr)

    def fetch_files(self, remote: str, local: Path, files: Sequence[str]) -> None:
        line = f"cd {shlex.quote(remote)} && tar --null -T - -cf -"
        names = "".join(f"{rel}\0" for rel in files).encode()
        with tempfile.TemporaryFile() as archive, tempfile.TemporaryFile() as given:
            given.write(names)
            given.seek(0)
            code, stderr = self._ssh(login_wrap("sh -c", line), stdin=given, stdout=archive)
            if code != 0:
                raise RemoteCommandError(f"copy from {remote} on {self.description} failed: "
                                         f"{stderr.strip()}", returncode=code, stderr=stderr)
            archive.seek(0)
            with tarfile.open(fileobj=archive, mode="r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    dest = local / safe_relative(member.name)
                    tmp = atomic_local_target(dest)
                    try:
                        with tar.extractfile(member) as data, open(tmp, "wb") as sink:  # type: ignore[union-attr]
                            shutil.copyfileobj(data, sink)
                        os.utime(tmp, (member.mtime, member.mtime))
                        os.replace(tmp, dest)
                    finally:
                        tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """End our master now (not after ControlPersist) and remove its private folder."""
        if self._control_dir is None:
            return
        if os.path.exists(f"{self._control_dir}/master"):
            subprocess.run(["ssh", *self._options, *self._mux, "-O", "exit", self.host],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None
