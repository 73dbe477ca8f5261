"""The cluster through the system ``ssh``: all of ~/.ssh/config, one master connection.

Every command of one hpcnn invocation rides ONE ssh ControlMaster connection (socket in a
private 0700 temp folder, closed in close() and on SIGTERM), so a 2FA login is typed once, and
rsync rides it too. A live master of ``hpcnn login`` (login_master.py) comes first: it is
ridden and left open, which is how cron jobs reach a cluster that asks for a one-time code.
When the user's ssh config already sets ControlMaster, that is honoured
instead (their master may outlive hpcnn, which is how cron jobs reuse a morning's 2FA login),
unless its ControlPath is in a folder other users can write. Output goes
to temporary files, not pipes: a master that backgrounds itself can hold inherited pipes open,
and reading them would wait for it to exit.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from hpcnn.errors import ConfigError, ConnectionFailed, HpcnnError, RemoteCommandError
from hpcnn.remote.base import TIMED_OUT, Result, login_wrap
from hpcnn.remote.early_login import CONTROL, Hint, remember, take
from hpcnn.remote.host_keys import KeyState, OfferedKey
from hpcnn.remote.login_master import LoginMaster
from hpcnn.remote.ssh_common import (
    Failure,
    SshConnection,
    Target,
    atomic_local_target,
    classify_ssh_stderr,
    extract_tar_stream,
    failure,
    fetch_failed,
    refuse_shared_control_path,
    ssh_options,
    tar_fetch_command,
)

if TYPE_CHECKING:
    from hpcnn.config import ClusterSection
    from hpcnn.remote.kept_shell import KeptShell

CONTROL_PERSIST_S = 60
"""How long an idle master of ours outlives a crashed hpcnn (close() ends it at once)."""


class _SigtermExit:
    """While a master of ours is open, SIGTERM (a cron timeout, ``kill``) ends hpcnn as an
    exception does, so close() still ends the master and removes its folder instead of
    leaving both for ControlPersist. Installed only from the main thread and only over the
    default action (a caller's own handler stays), removed when the last master closes."""

    def __init__(self) -> None:
        self.holders = 0

    def hold(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        if self.holders == 0:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return False
            signal.signal(signal.SIGTERM, _terminate)
        self.holders += 1
        return True

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0 and signal.getsignal(signal.SIGTERM) is _terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


_SIGTERM = _SigtermExit()


def _login_ssh(argv: list[str]) -> tuple[int, str]:
    """Run the ssh that opens a login master: it asks for the code on the terminal (/dev/tty),
    and what the cluster says (instructions, a menu, a refusal) reaches stderr as it comes; a
    copy is kept to name a failure. The pipe is read by a thread and left once ssh has exited
    (and a moment more for its last lines): the master in the background must not be waited
    for, should it keep the pipe."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen: list[str] = []

    def relay(pipe: IO[bytes]) -> None:
        for raw in pipe:
            line = raw.decode(errors="replace")
            seen.append(line)
            sys.stderr.write(line)
            sys.stderr.flush()

    assert proc.stderr is not None
    reader = threading.Thread(target=relay, args=(proc.stderr,), daemon=True)
    reader.start()
    code = proc.wait()
    reader.join(timeout=2)
    return code, "".join(seen)


def _own_master(control_dir: str) -> list[str]:
    """The options of a master of ours, its socket in ``control_dir``."""
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/master",
            "-o", f"ControlPersist={CONTROL_PERSIST_S}"]


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


class _SshPipe:
    """A kept shell's channel under openssh: one ``ssh`` client on the master, its pipes (it
    is never a master itself, so nothing in the background holds them)."""

    def __init__(self, argv: list[str]) -> None:
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err)
        self.stderr = ""
        """What ssh said, once closed (it names a dropped connection)."""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, timeout: float | None) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError
        return os.read(fd, 1 << 16)

    def close(self) -> None:
        """At once, not after the shell's goodbye (a round trip of the link): between
        commands nothing runs, and a stuck command is given up (the master then closes the
        channel, and the cluster ends the shell)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if not self._err.closed:
            self.stderr = _read(self._err)
            self._err.close()


class OpenSSHConnection(SshConnection):
    def __init__(self, cluster: ClusterSection) -> None:
        if not shutil.which("ssh"):
            raise ConnectionFailed("the ssh client is not installed here",
                                   hint="install OpenSSH, or set cluster.ssh: fabric")
        self.cluster = cluster
        self.host = cluster.host or ""
        batch = not sys.stdin.isatty()
        self._options = ssh_options(cluster, batch=batch)
        settings = self._effective_config()
        jump = settings.get("proxyjump", "")
        self.target = Target(settings.get("hostname", self.host), int(settings.get("port", 22)),
                             settings.get("user", ""), jump)
        if jump:
            self._options = ssh_options(cluster, batch=batch, jump=jump)
        self.description = str(self.target)
        user_files = [os.path.expanduser(p) for p in settings.get(
            "userknownhostsfile", "~/.ssh/known_hosts").split()]
        self.known_hosts_file = user_files[0]
        self._known_files = user_files + settings.get("globalknownhostsfile", "").split()
        self.hash_known_hosts = settings.get("hashknownhosts") == "yes"
        self._control_dir: str | None = None
        self._early: tuple[subprocess.Popen[bytes], IO[bytes]] | None = None
        self._mux: list[str] = []
        self._holds_sigterm = False
        self._login = LoginMaster.for_target(self.target)
        self.rides_login = self._login_alive()
        """Whether the commands ride the master of ``hpcnn login`` (and leave it open)."""
        if self.rides_login:
            self._mux = self._login.client_options()
        elif settings.get("controlmaster", "false") not in ("false", "no"):
            refuse_shared_control_path(settings.get("controlpath", "none"))
        else:
            # /tmp, not $TMPDIR: macOS's long TMPDIR can exceed the socket path limit (104).
            self._control_dir = tempfile.mkdtemp(prefix="hpcnn-ssh-",
                                                 dir="/tmp" if os.path.isdir("/tmp") else None)
            self._mux = _own_master(self._control_dir)
            self._holds_sigterm = _SIGTERM.hold()

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

    def _control(self, operation: str) -> bool:
        """``ssh -O check|exit`` on the login master; True when ssh says it worked."""
        argv = ["ssh", *self._options, "-o", f"ControlPath={self._login.socket}",
                "-O", operation, self.host]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=30,
                                  check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _login_alive(self) -> bool:
        """A login master to ride: there, answering, and not past its end. One past its end
        is closed here, so that cron asks for a new login instead of riding an old one."""
        if not self._login.exists():
            return False
        if self._login.expired():
            self._control("exit")
            self._login.forget()
            return False
        if self._control("check"):
            return True
        self._login.forget()  # it ended (idle ControlPersist, reboot, network): a stale socket
        return False

    def login_until(self) -> float | None:
        """When the ridden login ends (epoch seconds); None when none is ridden."""
        return self._login.until() if self.rides_login else None

    def login(self, persist_s: int) -> bool:
        """Open the login master from this terminal: ssh asks for the one-time code (on
        /dev/tty) and the master stays up to ``persist_s`` seconds for later commands.
        False when one is open already (it is kept, with its own end)."""
        if self.rides_login:
            return False
        if not sys.stdin.isatty():
            raise ConfigError("`hpcnn login` asks for the cluster's one-time code, so it needs "
                              "a terminal", hint="run `hpcnn login` in a terminal; cron and "
                              "scripts then ride the connection it opens")
        self._login.prepare()
        argv = ["ssh", *self._options, *self._login.master_options(persist_s), "-T",
                self.host, "true"]
        code, stderr = _login_ssh(argv)
        if code != 0:
            self._login.forget()
            found = classify_ssh_stderr(stderr) if code == 255 else None
            if found and found[0] == Failure.ONE_TIME_CODE:
                raise ConnectionFailed(
                    f"{self.description} took your key but refused the one-time code",
                    hint="type the code your authenticator shows now; each code is accepted "
                         "once, so after a refusal wait for the next one")
            self._raise_connection_failure(code, stderr)
            raise ConnectionFailed(f"ssh could not log in to {self.description} (exit {code}): "
                                   f"{stderr.strip()[-300:]}",
                                   hint=f"try `ssh -v {self.host}` to see why")
        self._login.record(persist_s)
        self.close()  # our own per-command master, never started
        self._mux = self._login.client_options()
        self.rides_login = True
        return True

    def logout(self) -> bool:
        """End the login master now; False when none was open."""
        if not self._login.exists():
            return False
        ended = self._control("exit")
        self._login.forget()
        self.rides_login = False
        return ended

    def start(self, hint: Hint | None = None) -> None:
        """Our master logs in now, in the background (``ssh -N``: no session; with
        ControlPersist, ssh exits once the master listens on its socket). Only our own
        master: a login master or the user's own is up already or is theirs to start.

        A login the console script began from ``hint`` (early_login.py) is taken over when its
        line is this very line, else ended; the line is filed under ``hint`` for next time."""
        early = take()
        if self._control_dir is None or self._early is not None:
            if early is not None:
                early.cancel()
            return
        line = ["ssh", *self._options, *_own_master(CONTROL), "-N", self.host]
        if early is not None and early.line == line:
            shutil.rmtree(self._control_dir, ignore_errors=True)  # made in __init__, unused
            self._control_dir = early.control_dir
            self._mux = _own_master(early.control_dir)
            self._early = early.proc, early.err
        else:
            if early is not None:
                early.cancel()
            # A file, not a pipe (the master keeps it open); closed by _await_master or close().
            err = tempfile.TemporaryFile()  # noqa: SIM115
            proc = subprocess.Popen([w.replace(CONTROL, self._control_dir)
                                     for w in line],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
            self._early = proc, err
        if hint is not None:
            remember(hint, line)

    def _await_master(self) -> None:
        """Wait for the login start() began; a refused one (exit 255 with ssh's words) is
        raised as the first command would have raised it, anything else is left to the
        command, which logs in itself."""
        if self._early is None:
            return
        proc, err = self._early
        try:
            code = proc.wait()
            stderr = _read(err)
        finally:
            err.close()
            self._early = None
        if code != 0:
            self._raise_connection_failure(code, stderr)

    def _ssh(self, remote_line: str, *, stdin: IO[bytes] | int | None, stdout: IO[bytes],
             timeout: float | None = None) -> tuple[int, str]:
        """Run one remote command line through the master; (exit status, stderr).

        Exit 255 with ssh's own words on stderr is a connection failure, raised here.
        """
        self._await_master()
        argv = ["ssh", *self._options, *self._mux, "-T", self.host, remote_line]
        with tempfile.TemporaryFile() as err:
            try:
                code = subprocess.run(argv, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                      stdout=stdout, stderr=err, timeout=timeout,
                                      check=False).returncode
            except subprocess.TimeoutExpired:
                return TIMED_OUT, f"timed out after {timeout:g} s"
            stderr = _read(err)
        self._raise_connection_failure(code, stderr)
        return code, stderr

    def _open_shell(self) -> KeptShell:
        """The kept shell rides the master (ControlMaster=no comes first, so it wins: this
        client never becomes a master that would keep its pipes)."""
        from hpcnn.remote.kept_shell import DISPATCHER, KeptShell

        self._await_master()
        argv = ["ssh", *self._options, "-o", "ControlMaster=no", *self._mux, "-T", self.host,
                DISPATCHER]
        return KeptShell(_SshPipe(argv), partial(login_wrap, self.cluster.login_shell))

    def _shell_lost(self, shell: KeptShell) -> None:
        """A kept shell whose ssh ended with its own words (exit 255: the connection dropped)
        raises them, as a command would have."""
        pipe = shell.pipe
        if isinstance(pipe, _SshPipe) and pipe.proc.returncode == 255:
            self._raise_connection_failure(255, pipe.stderr)

    def _raise_connection_failure(self, code: int, stderr: str) -> None:
        found = classify_ssh_stderr(stderr) if code == 255 else None
        if found:
            kind, line = found
            if kind == Failure.HOSTKEY_UNKNOWN:
                line = self._offered_fingerprint()
            raise failure(kind, self.target, line, timeout=self.cluster.connect_timeout)

    def _offered_fingerprint(self) -> str:
        """The unknown key's fingerprint for the error message; empty when it cannot be had."""
        try:
            offered = self.offered_host_key()
        except HpcnnError:
            return ""
        return offered.fingerprint if offered.state is KeyState.UNKNOWN else ""

    def offered_host_key(self) -> OfferedKey:
        """ssh itself, with hpcnn's options and hops, but with the known_hosts files the
        connection reads given as global ones (ssh compares the key with them and warns of a
        change), a scratch file as the user one (where accept-new records an unknown key), no
        master and no authentication (the login stops at "Permission denied" after the key
        exchange: no 2FA prompt, no session)."""
        name = self.target.known_hosts_name
        with tempfile.TemporaryDirectory() as scratch:
            found = Path(scratch, "offered")
            argv = ["ssh", "-o", f"UserKnownHostsFile={found}",
                    "-o", f"GlobalKnownHostsFile={' '.join(self._known_files) or '/dev/null'}",
                    "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no",
                    "-o", "UpdateHostKeys=no", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                    "-o", "PreferredAuthentications=none", "-o", "BatchMode=yes",
                    *self._options, "-T", self.host, "true"]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, check=False,
                                      timeout=self.cluster.connect_timeout * 3 + 10)
            except subprocess.TimeoutExpired as exc:
                raise failure(Failure.TIMEOUT, self.target,
                              timeout=self.cluster.connect_timeout) from exc
            entry = found.read_text().split() if found.exists() else []
        if len(entry) >= 3:
            return OfferedKey(KeyState.UNKNOWN, entry[0], entry[1], entry[2])
        found_failure = classify_ssh_stderr(proc.stderr) if proc.returncode == 255 else None
        if found_failure and found_failure[0] == Failure.HOSTKEY_CHANGED:
            warning = "\n".join(line for line in proc.stderr.splitlines()
                                if str(found) not in line and "Pseudo-terminal" not in line)
            return OfferedKey(KeyState.CHANGED, name, warning=warning.strip())
        if proc.returncode == 0 or (found_failure and found_failure[0] == Failure.AUTH):
            return OfferedKey(KeyState.KNOWN, name)
        kind, line = found_failure or (Failure.CLOSED, proc.stderr.strip())
        raise failure(kind, self.target, line, timeout=self.cluster.connect_timeout)

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
        self._await_master()
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

    def fetch_files(self, remote: str, local: Path, files: Sequence[str],
                    on_file: Callable[[str], None] | None = None) -> None:
        """All files in one command: the cluster's tar streams them and each is written here
        as it arrives, to a temporary name renamed once whole (what a killed fetch leaves is a
        ``*.tmp-hpcnn`` partial, never a truncated file under the real name)."""
        line, names = tar_fetch_command(remote, files)
        self._await_master()
        with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as err:
            given.write(names)
            given.seek(0)
            argv = ["ssh", *self._options, *self._mux, "-T", self.host,
                    login_wrap("sh -c", line)]
            proc = subprocess.Popen(argv, stdin=given, stdout=subprocess.PIPE, stderr=err)
            assert proc.stdout is not None
            try:
                landed, broken = extract_tar_stream(proc.stdout, Path(local), files,
                                                    on_file)
            except BaseException:  # this side failed (disk full, Ctrl-C): stop the stream
                proc.kill()
                proc.wait()
                raise
            # The archive's padding, read so that ssh never writes into a closed pipe; left
            # unread (the thread abandoned) should a backgrounded master hold the pipe.
            rest = threading.Thread(target=proc.stdout.read, daemon=True)
            rest.start()
            code = proc.wait()
            rest.join(timeout=5)
            stderr = _read(err)
        self._raise_connection_failure(code, stderr)
        error = fetch_failed(remote, self.description, files, landed, code, stderr, broken)
        if error:
            raise error

    def close(self) -> None:
        """End our master now (not after ControlPersist) and remove its private folder."""
        self._close_kept()
        if self._control_dir is None:
            return
        if self._early is not None:  # a login still under way: it is not waited for
            proc, err = self._early
            proc.kill()
            proc.wait()
            err.close()
            self._early = None
        if self._holds_sigterm:
            _SIGTERM.release()
            self._holds_sigterm = False
        if os.path.exists(f"{self._control_dir}/master"):
            subprocess.run(["ssh", *self._options, *self._mux, "-O", "exit", self.host],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30, check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

