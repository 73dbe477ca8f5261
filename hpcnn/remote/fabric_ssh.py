"""The cluster through Fabric/paramiko: pure Python, one transport for the whole invocation.

The ssh config (``$HPCNN_SSH_CONFIG`` or ~/.ssh/config) is loaded explicitly, so Host aliases,
HostName, User, Port, IdentityFile and ProxyJump work as with ``ssh``; keys come from there,
cluster.yaml, the agent and ~/.ssh. Fabric itself accepts unknown host keys silently
(AutoAddPolicy) and reads no known_hosts: here known_hosts files are loaded (ssh's defaults or
the config's UserKnownHostsFile) and an unknown key is refused with its fingerprint, on the
cluster and on every ProxyJump hop. The agent is never forwarded, whatever ForwardAgent says.
Commands run on channels of ONE paramiko transport, and files move over SFTP on that same
transport; only rsync, when used, opens its own ssh connection.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fabric
import paramiko

from hpcnn.errors import HpcnnError, RemoteCommandError
from hpcnn.remote.base import TIMED_OUT, Result, login_wrap
from hpcnn.remote.host_keys import KeyState, OfferedKey, changed_warning, fingerprint
from hpcnn.remote.ssh_common import (
    Failure,
    SshConnection,
    Target,
    atomic_local_target,
    extract_tar_stream,
    failure,
    fetch_failed,
    jump_failure,
    refuse_shared_control_path,
    ssh_config_file,
    ssh_options,
    tar_fetch_command,
)

if TYPE_CHECKING:
    from hpcnn.config import ClusterSection
    from hpcnn.remote.kept_shell import KeptShell

# paramiko logs every failed handshake with a traceback; hpcnn reports failures itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2", "/etc/ssh/ssh_known_hosts")
_READ_SIZE = 65536
SFTP_LANES = 8
"""SFTP sessions that send files at once (below OpenSSH's default MaxSessions of 10)."""
_TYPING_S = 120
"""How long a person has to type a password or code at a prompt: sshd's LoginGraceTime."""


def _fingerprint(key: paramiko.PKey) -> str:
    return fingerprint(key.get_name(), key.get_base64())


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(_fingerprint(key))
        self.key = key
        self.offered = _fingerprint(key)


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Never add a key silently: the user checks the fingerprint and records it."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise _UnknownHostKey(key)


def _prompt(title: str, instructions: str, prompts: Sequence[tuple[str, bool]]) -> list[str]:
    """keyboard-interactive (passwords, 2FA codes) on the terminal; hidden unless echoed."""
    for text in (title, instructions):
        if text.strip():
            print(text.strip(), file=sys.stderr)
    return [input(p) if echo else getpass.getpass(p) for p, echo in prompts]


class _CodeNeeded(paramiko.SSHException):
    """The key was accepted, a one-time code is asked for, and there is no terminal."""


class _Transport(paramiko.Transport):
    """After a key with partial success paramiko asks for the second factor through
    auth_interactive_dumb, which prints the prompt on stdout, echoes the code and reads
    stdin. Here the code is asked for as every prompt is (_prompt: stderr, hidden), with as
    long to type it as sshd gives (LoginGraceTime, 120 s) rather than the connect timeout;
    with no terminal the login stops at once with the one-time-code message."""

    typed_at_prompt = False
    """Whether a person typed a code or password to open this transport."""

    def auth_interactive_dumb(self, username: str, handler: Any = None,
                              submethods: str = "") -> list[str]:
        if not sys.stdin.isatty():
            raise _CodeNeeded("the cluster asks for a one-time code and there is no terminal")
        self.auth_timeout = max(self.auth_timeout or 0, _TYPING_S)
        self.typed_at_prompt = True
        return self.auth_interactive(username, _prompt, submethods)


def _known_hosts_files(ssh_config: dict[str, Any]) -> list[str]:
    """UserKnownHostsFile from the ssh config replaces the user's default, as in OpenSSH."""
    configured = ssh_config.get("userknownhostsfile")
    user = configured.split() if isinstance(configured, str) else list(_DEFAULT_KNOWN_HOSTS[:2])
    return [os.path.expanduser(p) for p in [*user, _DEFAULT_KNOWN_HOSTS[2]]]


def _secure(conn: fabric.Connection) -> None:
    """Known hosts, the refusing policy and no agent forwarding for the connection and every
    ProxyJump hop (Fabric would forward the agent on its own sessions under ForwardAgent yes;
    hpcnn opens its channels itself, and says so here too)."""
    hop: Any = conn
    while isinstance(hop, fabric.Connection):
        hop.forward_agent = False
        hop.client.set_missing_host_key_policy(_RefuseUnknown())
        for path in _known_hosts_files(hop.ssh_config):
            if os.path.isfile(path):
                hop.client.load_system_host_keys(path)
        hop = hop.gateway


class FabricConnection(SshConnection):
    def __init__(self, cluster: ClusterSection) -> None:
        self.cluster = cluster
        config_path = ssh_config_file()
        config = fabric.Config(runtime_ssh_path=config_path) if config_path else fabric.Config()
        # The banner and auth waits get the same limit: a server that accepts the TCP
        # connection and never speaks is as unreachable as one that never accepts it.
        wait = max(1, round(cluster.connect_timeout))
        kwargs: dict[str, Any] = {"banner_timeout": wait, "auth_timeout": wait,
                                  "transport_factory": _Transport}
        if cluster.identity_file:
            kwargs["key_filename"] = [os.path.expanduser(cluster.identity_file)]
        self._conn = fabric.Connection(
            cluster.host or "", user=cluster.user, port=cluster.port, config=config,
            connect_timeout=wait, connect_kwargs=kwargs, forward_agent=False,
        )
        # rsync's ssh reads the same ssh config, master included.
        if str(self._conn.ssh_config.get("controlmaster", "no")).lower() not in ("no", "false"):
            refuse_shared_control_path(self._conn.ssh_config.get("controlpath", "none"))
        jump = (self._conn.ssh_config.get("proxyjump", "")
                if isinstance(self._conn.gateway, fabric.Connection) else "")
        self.target = Target(self._conn.host, int(self._conn.port), self._conn.user, jump)
        self.description = str(self.target)
        self.known_hosts_file = _known_hosts_files(self._conn.ssh_config)[0]
        self.hash_known_hosts = (
            str(self._conn.ssh_config.get("hashknownhosts", "no")).lower() == "yes")
        self._sftp: paramiko.SFTPClient | None = None
        self._hop_failed = False
        """Whether the last failure was a ProxyJump hop's (known only before the hops close)."""

    def _transport(self) -> paramiko.Transport:
        """The one transport, opened on first use; failures become ConnectionFailed."""
        if self._conn.is_connected:
            return self._conn.transport
        start = time.monotonic()
        _secure(self._conn)  # as ssh does, read known_hosts as it is now (accept may add)
        try:
            try:
                self._conn.open()
            except paramiko.AuthenticationException:
                if not (sys.stdin.isatty() and self._conn.client.get_transport()):
                    raise
                self._conn.client.get_transport().auth_interactive_dumb(self._conn.user)
                self._conn.transport = self._conn.client.get_transport()
        except HpcnnError:
            raise
        except Exception as exc:
            err = self._failure(exc, waited=time.monotonic() - start)
            self._close_all()
            raise err from exc
        return self._conn.transport

    def _failure(self, exc: BaseException, waited: float = 0.0) -> HpcnnError:
        """The failure of a connect or channel, blamed on the ProxyJump host when that is the
        hop that did not open."""
        kind, detail = self._cause(exc, waited)
        timeout = self.cluster.connect_timeout
        hop = _failed_hop(self._conn)
        self._hop_failed = hop is not None
        if hop is not None:
            return jump_failure(kind, hop.original_host, Target(hop.host, int(hop.port), hop.user),
                                self.target, detail, timeout=timeout)
        return failure(kind, self.target, detail, timeout=timeout)

    def _cause(self, exc: BaseException, waited: float) -> tuple[Failure, str]:
        """The cause of a failed connect or channel. A server that took the TCP connection and
        then said nothing until the timeout is "no answer": paramiko reports that as a banner
        error, or (its handshake wait ending first) as "No existing session"."""
        if isinstance(exc, _UnknownHostKey):
            return Failure.HOSTKEY_UNKNOWN, exc.offered
        if isinstance(exc, _CodeNeeded):
            return Failure.ONE_TIME_CODE, ""
        if isinstance(exc, paramiko.BadHostKeyException):
            return Failure.HOSTKEY_CHANGED, f"it now offers {_fingerprint(exc.key)}"
        if isinstance(exc, paramiko.AuthenticationException):
            return Failure.AUTH, str(exc)
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            codes = {getattr(e, "errno", None) for e in exc.errors.values()}
            if codes <= {errno.ECONNREFUSED}:
                return Failure.REFUSED, ""
            return Failure.UNREACHABLE, str(exc)
        timed_out = any(isinstance(e, TimeoutError | socket.timeout) for e in _chain(exc))
        if timed_out or waited >= self.cluster.connect_timeout * 0.9:
            return Failure.TIMEOUT, ""
        if isinstance(exc, ConnectionRefusedError):
            return Failure.REFUSED, ""
        if isinstance(exc, socket.gaierror | OSError):
            return Failure.UNREACHABLE, str(exc)
        return Failure.CLOSED, str(exc)

    def offered_host_key(self) -> OfferedKey:
        """Open the connection as every command does (hops checked as usual): paramiko
        compares the cluster's key with the known_hosts files; an unknown one stops the
        connect before authentication, a known one logs in."""
        name = self.target.known_hosts_name
        try:
            self._transport()
        except HpcnnError as exc:
            cause = exc.__cause__
            if self._hop_failed:
                raise
            if isinstance(cause, _UnknownHostKey):
                return OfferedKey(KeyState.UNKNOWN, name, cause.key.get_name(),
                                  cause.key.get_base64())
            if isinstance(cause, paramiko.BadHostKeyException):
                key = cause.key
                return OfferedKey(KeyState.CHANGED, name, key.get_name(), key.get_base64(),
                                  changed_warning(key.get_name(), key.get_base64(),
                                                  " or ".join(_known_hosts_files(
                                                      self._conn.ssh_config))))
            raise
        return OfferedKey(KeyState.KNOWN, name)

    def _run(self, line: str, *, stdin: str | None, timeout: float | None) -> Result:
        transport = self._transport()
        try:
            channel = transport.open_session(timeout=self.cluster.connect_timeout)
        except Exception as exc:
            raise self._failure(exc) from exc
        with channel:
            channel.settimeout(timeout)
            channel.exec_command(login_wrap(self.cluster.login_shell, line))
            if stdin:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
            errors: list[bytes] = []
            reader = threading.Thread(target=_drain, args=(channel.recv_stderr, errors),
                                      daemon=True)
            reader.start()
            output: list[bytes] = []
            try:
                _drain(channel.recv, output)
                reader.join(timeout)
                code = channel.recv_exit_status()
            except TimeoutError:
                return Result(b"".join(output).decode(errors="replace"),
                              f"timed out after {timeout:g} s", TIMED_OUT)
        return Result(b"".join(output).decode(errors="replace"),
                      b"".join(errors).decode(errors="replace"), code)

    def _open_shell(self) -> KeptShell:
        from hpcnn.remote.kept_shell import DISPATCHER, KeptShell

        transport = self._transport()
        try:
            channel = transport.open_session(timeout=self.cluster.connect_timeout)
            channel.exec_command(DISPATCHER)
        except Exception as exc:
            raise self._failure(exc) from exc
        return KeptShell(_ChannelPipe(channel), partial(login_wrap, self.cluster.login_shell))

    def sftp(self) -> paramiko.SFTPClient:
        """One SFTP session on the same transport, opened on first use."""
        if self._sftp is None:
            self._sftp = paramiko.SFTPClient.from_transport(self._transport())
        return self._sftp

    def _upload(self, local: Path, remote: str, sftp: paramiko.SFTPClient | None = None) -> None:
        """SFTP to a temporary name, then an atomic rename over the target. The SFTP server
        creates files with sshd's umask, not the ``umask 077`` of hpcnn's commands, so the
        file is made the account's alone (the owner's bits of the local file) before it is
        renamed into place."""
        tmp = f"{remote}.tmp-hpcnn"
        sftp = sftp or self.sftp()
        try:
            sftp.put(str(local), tmp, confirm=False)  # a failed write raises; no stat per file
            st = os.stat(local)
            sftp.chmod(tmp, stat.S_IMODE(st.st_mode) & 0o700)
            sftp.utime(tmp, (st.st_mtime, st.st_mtime))
            sftp.posix_rename(tmp, remote)
        except OSError as exc:
            raise self._sftp_error("write", remote, exc) from exc

    def _download(self, remote: str, local: Path) -> None:
        tmp = atomic_local_target(local)
        try:
            sftp = self.sftp()
            sftp.get(remote, str(tmp))
            mtime = sftp.stat(remote).st_mtime
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, local)
        except OSError as exc:
            raise self._sftp_error("read", remote, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _sftp_error(self, verb: str, remote: str, exc: OSError) -> RemoteCommandError:
        return RemoteCommandError(f"cannot {verb} {remote} on {self.description}: "
                                  f"{exc.strerror or exc}", returncode=1)

    def _mkdirs(self, folders: Sequence[str]) -> None:
        self.run(["mkdir", "-p", *sorted(set(folders))])

    def put(self, local: Path, remote: str) -> None:
        self._mkdirs([os.path.dirname(remote) or "."])
        self._upload(Path(local), remote)

    def get(self, remote: str, local: Path) -> None:
        self._download(remote, Path(local))

    def fetch_files(self, remote: str, local: Path, files: Sequence[str],
                    on_file: Callable[[str], None] | None = None) -> None:
        """All files in one command on this connection: the cluster's tar streams them and
        each is written here as it arrives (SFTP costs about eight round trips a file: a
        sync of five folds took 16 s through a 50 ms link, and 4 s this way)."""
        line, names = tar_fetch_command(remote, files)
        try:
            channel = self._transport().open_session(timeout=self.cluster.connect_timeout)
        except Exception as exc:
            raise self._failure(exc) from exc
        with channel:
            channel.exec_command(login_wrap("sh -c", line))
            errors: list[bytes] = []
            threads = [threading.Thread(target=_drain, args=(channel.recv_stderr, errors),
                                        daemon=True),
                       # tar reads the names as it archives: sent while the archive is read,
                       # or a long list and a full window would wait on each other
                       threading.Thread(target=_send_all, args=(channel, names), daemon=True)]
            for thread in threads:
                thread.start()
            landed, broken = extract_tar_stream(channel.makefile("rb"), Path(local), files,
                                                on_file)
            _drain(channel.recv, [])  # the archive's padding
            for thread in threads:
                thread.join()
            code = channel.recv_exit_status()
        error = fetch_failed(remote, self.description, files, landed, code,
                             b"".join(errors).decode(errors="replace"), broken)
        if error:
            raise error

    def use_rsync(self) -> bool:
        """rsync runs the system ssh, a login of its own: where this one needed a code typed
        at a prompt, that would be a second code (and a one-time code is taken only once, so
        the person would wait for the next one). Files then go over SFTP on this connection,
        unless cluster.transfer asks for rsync by name."""
        chosen = super().use_rsync()
        typed = getattr(self._conn.transport, "typed_at_prompt", False)
        return chosen and not (typed and self.cluster.transfer != "rsync")

    def rsync_ssh_command(self) -> list[str]:
        return ["ssh", *ssh_options(self.cluster, batch=not sys.stdin.isatty(),
                                    jump=self.target.jump)]

    def rsync_destination(self) -> str:
        return self.cluster.host or self.target.host

    def send_files(self, local: Path, remote: str, files: Sequence[str]) -> None:
        """Each file costs six round trips (open, write, close, chmod, utime, rename): files go
        over up to SFTP_LANES sessions of the one connection at once, each session used by one
        thread only (as many as the server allows: sshd's MaxSessions)."""
        from concurrent.futures import ThreadPoolExecutor

        self._mkdirs([os.path.dirname(f"{remote}/{rel}") for rel in files])
        lanes = [self.sftp()]
        try:
            while len(lanes) < min(SFTP_LANES, len(files)):
                try:
                    lanes.append(paramiko.SFTPClient.from_transport(self._transport()))
                except (paramiko.SSHException, OSError):
                    break  # the server's limit of sessions per connection

            failed = threading.Event()

            def lane(index: int) -> None:
                for rel in files[index::len(lanes)]:
                    if failed.is_set():
                        return  # another lane failed: the push stops; the next one resumes
                    try:
                        self._upload(local / rel, f"{remote}/{rel}", lanes[index])
                    except BaseException:
                        failed.set()
                        raise

            with ThreadPoolExecutor(len(lanes)) as pool:
                for done in [pool.submit(lane, i) for i in range(len(lanes))]:
                    done.result()
        finally:
            for extra in lanes[1:]:
                extra.close()

    def close(self) -> None:
        self._close_kept()
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._close_all()

    def _close_all(self) -> None:
        """Close the connection and every ProxyJump hop (Fabric leaves the hops open)."""
        hop: Any = self._conn
        while isinstance(hop, fabric.Connection):
            hop.close()
            hop = hop.gateway


class _ChannelPipe:
    """A kept shell's channel under fabric: one paramiko channel on the transport."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def send(self, data: bytes) -> None:
        self._channel.sendall(data)

    def recv(self, timeout: float | None) -> bytes:
        self._channel.settimeout(timeout)
        return self._channel.recv(1 << 16)  # socket.timeout is TimeoutError

    def close(self) -> None:
        self._channel.close()


def _failed_hop(conn: fabric.Connection) -> fabric.Connection | None:
    """The ProxyJump hop nearest this machine that did not open (hops open from here
    outwards), or None when every hop is open and the failure is the cluster's own."""
    failed = None
    hop: Any = conn.gateway
    while isinstance(hop, fabric.Connection):
        if not (hop.is_connected and hop.transport.is_authenticated()):
            failed = hop
        hop = hop.gateway
    return failed


def _chain(exc: BaseException | None) -> list[BaseException]:
    """An exception and the ones it was raised from or while handling (paramiko wraps a
    banner timeout in a plain SSHException)."""
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def _send_all(channel: paramiko.Channel, data: bytes) -> None:
    """Send ``data`` as the command's whole stdin; a command that exited early (its error is
    what counts) may have closed the channel."""
    try:
        channel.sendall(data)
        channel.shutdown_write()
    except OSError:
        pass


def _drain(recv: Any, sink: list[bytes]) -> None:
    while True:
        chunk = recv(_READ_SIZE)
        if not chunk:
            return
        sink.append(chunk)

