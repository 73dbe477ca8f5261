"""What both SSH connections share: failure messages, ssh/rsync argv, and incremental-copy rules.

The two transports (system OpenSSH, Fabric/paramiko) must fail the same way for the same
cause, so the user-facing text of every connection failure lives here once; each transport
only recognises the cause (from ssh's stderr, or from paramiko's exception). rsync runs the
system ``ssh`` under both transports, so its ``-e`` command is built here from the cluster
section too. Nothing here imports paramiko: the CLI start-up path may import this module.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hpcnn.errors import ConfigError, ConnectionFailed, RemoteCommandError
from hpcnn.remote.base import Connection, excluded, in_members, safe_relative
from hpcnn.remote.defaults import DEFAULT_PERSIST

if TYPE_CHECKING:
    from hpcnn.config import ClusterSection
    from hpcnn.remote.host_keys import OfferedKey

SSH_CONFIG_ENV = "HPCNN_SSH_CONFIG"
"""An ssh config file used instead of ~/.ssh/config (both transports): a project's own hosts,
and how the tests point a Host alias at the test bed without touching the user's files."""

PARTIAL_DIR = ".rsync-partial"


class Failure(str, Enum):
    UNREACHABLE = "unreachable"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    AUTH = "auth"
    HOSTKEY_UNKNOWN = "hostkey-unknown"
    HOSTKEY_CHANGED = "hostkey-changed"
    CLOSED = "closed"
    ONE_TIME_CODE = "one-time-code"
    """The key was accepted and the cluster asks for a code too, with no terminal to type it."""


ONE_TIME_CODE_MESSAGE = "this cluster asks for a one-time code: run `hpcnn login` in a terminal"


@dataclass(frozen=True)
class Target:
    """Where a connection goes, as resolved from cluster.yaml and the ssh config."""

    host: str
    port: int
    user: str
    jump: str = ""
    """ProxyJump from the ssh config: the host(s) the connection goes through."""

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts files use: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def ssh_config_file() -> str | None:
    return os.environ.get(SSH_CONFIG_ENV) or None


def accept_hint(target: Target) -> str:
    """Behind a jump host a direct ``ssh-keyscan`` would ask another machine (or none): there
    only the doctor, which fetches the key through the jump host, is offered."""
    check = "compare the fingerprint with the one your cluster documents (or ask its admins)"
    if target.jump:
        return (f"{check}, then run `hpcnn doctor --accept-host-key`: it fetches the key "
                "through the jump host, shows it and asks")
    port = f"-p {target.port} " if target.port != 22 else ""
    return (
        f"{check}, then record it: ssh-keyscan {port}{shlex.quote(target.host)} >> "
        "~/.ssh/known_hosts (or run `hpcnn doctor --accept-host-key`, which shows it and asks)"
    )


def failure(kind: Failure, target: Target, detail: str = "", *,
            timeout: float | None = None) -> ConnectionFailed:
    """The one message (and fix) for each way a connection fails, whatever the transport; one
    through a ProxyJump host names that host, which may be the one that failed."""
    err = _failure(kind, target, detail, timeout=timeout)
    if not target.jump:
        return err
    return ConnectionFailed(
        f"{err.args[0]} (through the jump host {target.jump}: ProxyJump in your ssh config)",
        hint=f"check that the jump host {target.jump} is reachable on its own; {err.hint}")


def jump_failure(kind: Failure, jump: str, hop: Target, final: Target, detail: str = "", *,
                 timeout: float | None = None) -> ConnectionFailed:
    """A failure known to be the ProxyJump host's (``hop``), not the cluster's (``final``)."""
    err = _failure(kind, hop, detail, timeout=timeout)
    return ConnectionFailed(
        f"the jump host {jump} (ProxyJump in your ssh config for {final}) failed: {err.args[0]}",
        hint=f"check the jump host's entry in your ssh config; {err.hint}")


def _failure(kind: Failure, target: Target, detail: str = "", *,
             timeout: float | None = None) -> ConnectionFailed:
    detail = detail.strip()
    where = f"{target.host} port {target.port}"
    if kind == Failure.REFUSED:
        return ConnectionFailed(
            f"{where} refused the connection: no SSH server listens there",
            hint="check cluster.port (or Port in your ssh config); SSH usually listens on 22")
    if kind == Failure.TIMEOUT:
        waited = f" within {timeout:g} s" if timeout else ""
        return ConnectionFailed(
            f"no answer from {where}{waited}" + (f" ({detail})" if detail else ""),
            hint="check cluster.host, your network or VPN, or raise cluster.connect_timeout")
    if kind == Failure.ONE_TIME_CODE:
        return ConnectionFailed(
            ONE_TIME_CODE_MESSAGE,
            hint=f"{target} took your key and then asked for a code that only a person can "
                 "type; `hpcnn login` asks for it once and keeps the connection open "
                 f"({DEFAULT_PERSIST} by default) for every later command and cron; "
                 "`hpcnn logout` closes it")
    if kind == Failure.AUTH:
        return ConnectionFailed(
            f"{target} refused the login" + (f": {detail}" if detail else ""),
            hint="check cluster.user and cluster.identity_file (or your ssh-agent); the public "
                 "key must be in ~/.ssh/authorized_keys on the cluster (ssh-copy-id does that)")
    if kind == Failure.HOSTKEY_UNKNOWN:
        return ConnectionFailed(
            f"the host key of {target.known_hosts_name} is not in your known_hosts, so hpcnn "
            "refuses to connect" + (f"; the server offers {detail}" if detail else ""),
            hint=accept_hint(target))
    if kind == Failure.HOSTKEY_CHANGED:
        return ConnectionFailed(
            f"the host key of {target.known_hosts_name} has CHANGED since you recorded it: "
            "this is either a reinstalled cluster or someone intercepting the connection"
            + (f" ({detail})" if detail else ""),
            hint="ask the cluster's admins whether the key changed; only then remove the old one "
                 f"with ssh-keygen -R {shlex.quote(target.known_hosts_name)} and record the "
                 "new one")
    if kind == Failure.CLOSED:
        return ConnectionFailed(
            f"{where} closed the connection" + (f": {detail}" if detail else ""),
            hint="the server may limit connections or the account may be locked; try "
                 f"`ssh -v -p {target.port} {target.user}@{target.host}` to see why")
    return ConnectionFailed(
        f"cannot reach {target.host}" + (f": {detail}" if detail else ""),
        hint="check cluster.host (or HostName in your ssh config) and your network or VPN")


# ssh's own messages (OpenSSH client, exit status 255), most specific first.
_SSH_MESSAGES: list[tuple[Failure, re.Pattern[str]]] = [
    (Failure.HOSTKEY_CHANGED, re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|"
                                         r"Host key for .* has changed")),
    (Failure.HOSTKEY_UNKNOWN, re.compile(r"host key is known for|Host key verification failed")),
    # After the key (partial success) the server lists only what is still missing.
    (Failure.ONE_TIME_CODE, re.compile(r"Permission denied \((?![^)]*publickey)"
                                       r"[^)]*keyboard-interactive[^)]*\)")),
    (Failure.AUTH, re.compile(r"Permission denied \(|Too many authentication failures|"
                              r"Authentication failed")),
    (Failure.REFUSED, re.compile(r"Connection refused")),
    (Failure.TIMEOUT, re.compile(r"timed out|Operation timed out")),
    (Failure.UNREACHABLE, re.compile(r"Could not resolve hostname|No route to host|"
                                     r"Network is unreachable|Name or service not known")),
    (Failure.CLOSED, re.compile(r"Connection closed by|Connection reset by|"
                                r"kex_exchange_identification|ssh_exchange_identification")),
]


def classify_ssh_stderr(stderr: str) -> tuple[Failure, str] | None:
    """Which connection failure ssh's stderr reports, with its most telling line; None when
    the text is the remote command's own (a command may exit 255 too)."""
    for kind, pattern in _SSH_MESSAGES:
        match = pattern.search(stderr)
        if match:
            line = next((ln.strip() for ln in stderr.splitlines() if pattern.search(ln)), "")
            return kind, line
    return None


def ssh_options(cluster: ClusterSection, *, batch: bool, jump: str = "") -> list[str]:
    """Options every ``ssh`` hpcnn starts gets (its commands under openssh, rsync's under both).

    Unknown host keys are refused (StrictHostKeyChecking=yes) whatever the ssh config says, and
    nothing is forwarded: a forwarded agent would let anyone with root on a login or compute
    node use this machine's keys, and a forwarded port or X display opens this machine to the
    cluster. BatchMode when there is no terminal, so cron never hangs on a password prompt.
    ``jump`` (ProxyJump from the ssh config) is rebuilt as a ProxyCommand so that each hop gets
    the same options: ssh passes a ProxyJump hop none of its command line.
    """
    hop = _hop_options(cluster, batch=batch)
    opts = list(hop)
    if cluster.port:
        opts += ["-p", str(cluster.port)]
    if cluster.user:
        opts += ["-l", cluster.user]
    if cluster.identity_file:
        opts += ["-i", os.path.expanduser(cluster.identity_file)]
    if jump and jump.lower() != "none":
        opts += ["-o", f"ProxyCommand={jump_command(jump, hop)}"]
    return opts


def _hop_options(cluster: ClusterSection, *, batch: bool) -> list[str]:
    """What the target and every ProxyJump hop share (not the target's port, user or key)."""
    config = ssh_config_file()
    opts = ["-F", config] if config else []
    opts += ["-o", f"ConnectTimeout={max(1, round(cluster.connect_timeout))}",
             "-o", "StrictHostKeyChecking=yes", "-o", "ForwardAgent=no", "-o", "ForwardX11=no",
             "-o", "ClearAllForwardings=yes"]
    if batch:
        opts += ["-o", "BatchMode=yes"]
    return opts


def jump_command(jump: str, options: Sequence[str]) -> str:
    """ProxyJump ``hop1,hop2`` as the equivalent ProxyCommand, every hop's ssh given
    ``options``. ssh expands ``%h``/``%p`` in a ProxyCommand, so each nested command (and every
    literal ``%``) is escaped once more per level."""
    command = ""
    for hop in jump.split(","):
        user, host, port = _parse_hop(hop.strip())
        argv = ["ssh", *(o.replace("%", "%%") for o in options)]
        if command:
            argv += ["-o", "ProxyCommand=" + command.replace("%", "%%")]
        argv += (["-l", user.replace("%", "%%")] if user else []) + (["-p", port] if port else [])
        command = shlex.join([*argv, "-W", "[%h]:%p", host.replace("%", "%%")])
    return command


def _parse_hop(hop: str) -> tuple[str, str, str]:
    """``[ssh://][user@]host[:port]`` (host may be ``[v6addr]``) -> (user, host, port)."""
    hop = hop.removeprefix("ssh://")
    user, _, rest = hop.rpartition("@")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        return user, host, tail.removeprefix(":")
    host, _, port = rest.partition(":") if rest.count(":") == 1 else (rest, "", "")
    return user, host, port


def refuse_shared_control_path(control_path: str) -> None:
    """The user's own ControlPath must be in a folder only they (or root) can write: anyone
    who can create the socket there first gets every command hpcnn sends and answers it."""
    if control_path == "none":
        return
    folder = os.path.dirname(control_path) or "."
    try:
        st = os.stat(folder)
    except OSError:
        return  # ssh itself reports a missing folder
    if st.st_mode & 0o022 or st.st_uid not in (os.getuid(), 0):
        raise ConfigError(
            f"your ssh config's ControlPath {control_path} is in {folder}, which other users "
            "can write: one of them could create that socket first and see or change "
            "everything hpcnn sends to the cluster",
            hint="point ControlPath at a folder only you can write, e.g. "
                 "`ControlPath ~/.ssh/cm-%C` (ssh creates the socket; ~/.ssh is 0700)")


def rsync_argv(ssh_command: Sequence[str], src: str | Sequence[str], dst: str,
               exclude: Sequence[str] = (), *, to_cluster: bool = False,
               make_dir: str | None = None) -> list[str]:
    """rsync that copies new and changed files and never deletes; interrupted files wait in
    ``.rsync-partial`` until the next run, so a reader never sees half a file. ``-s`` keeps
    remote paths with spaces, quotes or ``$(...)`` from being parsed by the remote shell.
    ``--safe-links`` drops symlinks that leave the tree, so a link made on one side never
    becomes a path to a file outside it on the other; what goes to the cluster is readable by
    the account only (``--chmod``: rsync otherwise copies the laptop's modes). ``make_dir``
    is created first by the remote rsync's own command (private, like every remote command),
    which saves a round trip per tree and works with rsync older than 3.2.3's ``--mkpath``."""
    argv = ["rsync", "-a", "-s", "--safe-links", "--partial", f"--partial-dir={PARTIAL_DIR}",
            "--exclude", PARTIAL_DIR, "-e", shlex.join(ssh_command)]
    if to_cluster:
        argv.append("--chmod=go-rwx")
    if make_dir:
        argv.append(f"--rsync-path=umask 077 && mkdir -p -- {shlex.quote(make_dir)} && rsync")
    for pattern in exclude:
        argv += ["--exclude", pattern]
    return [*argv, *([src] if isinstance(src, str) else src), dst]


@functools.cache
def local_rsync_ok() -> bool:
    """GNU rsync here (macOS ships openrsync, which lacks options hpcnn uses); asked once per
    process."""
    if not shutil.which("rsync"):
        return False
    try:
        out = subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.match(r"rsync\s+version\s+3", out))


# (size, whole-second mtime) of each file below a folder, by POSIX relative path.
Listing = Mapping[str, tuple[int, int]]


def local_listing(root: Path) -> dict[str, tuple[int, int]]:
    """Files below ``root``; a symlink only when it stays inside ``root`` (a link leaving the
    tree, e.g. to /etc/passwd or a key, is never read and sent)."""
    files = {}
    top = root.resolve()
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_symlink() and not path.resolve().is_relative_to(top):
                continue
            if path.is_file():
                st = path.stat()
                files[path.relative_to(root).as_posix()] = (st.st_size, int(st.st_mtime))
    return files


def remote_listing_line(root: str) -> str:
    """One remote command listing every file below ``root`` as ``size mtime path`` (NUL-ended,
    so any file name survives); nothing when the folder does not exist yet."""
    return (f"cd {shlex.quote(root)} 2>/dev/null || exit 0; "
            "find . -type f -printf '%s %T@ %P\\0'")


def parse_listing(stdout: str) -> dict[str, tuple[int, int]]:
    files = {}
    for entry in stdout.split("\0"):
        size, _, rest = entry.partition(" ")
        mtime, _, rel = rest.partition(" ")
        if rel and size.isdigit():
            files[rel] = (int(size), int(float(mtime)))
    return files


def to_copy(source: Listing, dest: Listing, exclude: Sequence[str] = ()) -> list[str]:
    """Files of ``source`` missing from ``dest`` or differing in size or mtime (rsync's rule);
    hpcnn's own partial files are never copied."""
    return sorted(rel for rel, meta in source.items()
                  if dest.get(rel) != meta and not excluded(rel, [PARTIAL_DIR, *exclude]))


PARTIAL_SUFFIX = ".tmp-hpcnn"
"""Ends the name of a download in progress (``.NAME.XXXX.tmp-hpcnn``): what a killed one leaves."""


def atomic_local_target(dest: Path) -> Path:
    """A temporary file beside ``dest`` (same file system, so os.replace is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
    os.close(fd)
    return Path(tmp)


def tar_fetch_command(remote: str, files: Sequence[str]) -> tuple[str, bytes]:
    """The remote line that streams ``files`` (relative to ``remote``) as one tar archive, and
    its stdin: the names, NUL-separated and taken verbatim (``--no-unquote``), so any character
    in a name travels as data. ``--hard-dereference``: two names of one file both come whole
    (GNU tar would send the second as a link with no data)."""
    return (f"cd {shlex.quote(remote)} && "
            "tar --null --no-unquote --hard-dereference -T - -cf -",
            "".join(f"{rel}\0" for rel in files).encode())


def extract_tar_stream(stream: IO[bytes], local: Path, files: Sequence[str],
                       on_file: Callable[[str], None] | None) -> tuple[set[str], str | None]:
    """Write the asked-for ``files`` of a tar stream below ``local`` as they arrive, each to a
    temporary name renamed once whole, with its mtime; ``on_file(rel)`` after each. Anything
    else in the archive (a name not asked for, a link, a folder) is not written: the archive
    comes from the cluster and is not trusted. Reading stops at tar's end-of-archive blocks,
    not at the stream's end. Returns the names that landed and what was wrong with the stream
    (None: nothing)."""
    wanted = {posixpath.normpath(rel) for rel in files}
    landed: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                rel = safe_relative(member.name)
                if rel not in wanted or rel in landed:
                    continue
                dest = local / rel
                tmp = atomic_local_target(dest)
                try:
                    with tar.extractfile(member) as data, open(tmp, "wb") as sink:  # type: ignore[union-attr]
                        shutil.copyfileobj(data, sink, 1 << 20)
                    os.utime(tmp, (member.mtime, member.mtime))
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
                landed.add(rel)
                if on_file is not None:
                    on_file(rel)
    except tarfile.TarError as exc:
        return landed, f"unreadable archive: {exc}"
    return landed, None


def fetch_failed(remote: str, where: str, files: Sequence[str], landed: set[str], code: int,
                 stderr: str, broken: str | None) -> RemoteCommandError | None:
    """The error of a tar fetch, if any: the remote tar's own words first, then the stream's
    state, then the names that did not come (a fetch is whole or it fails)."""
    missing = [rel for rel in files if posixpath.normpath(rel) not in landed]
    if code == 0 and broken is None and not missing:
        return None
    if code != 0:
        detail = stderr.strip() or broken or f"exit {code}"
    elif broken:
        detail = broken
    else:
        detail = (f"{len(missing)} file(s) did not come: "
                  + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return RemoteCommandError(f"copy from {remote} on {where} failed: {detail}",
                              returncode=code or 1, stderr=stderr)


RSYNC_THERE = "__HPCNN_RSYNC_THERE__"
"""What ``transfer_probe`` prints when the cluster has rsync."""


class SshConnection(Connection):
    """push_tree/pull_tree for both SSH transports: rsync when both ends have it (and the
    config allows), else each transport's own file copy over its one connection."""

    cluster: ClusterSection
    target: Target
    known_hosts_file: str
    """Where this transport reads (and ``doctor --accept-host-key`` records) host keys."""
    hash_known_hosts: bool
    """HashKnownHosts from the ssh config: record host names hashed."""
    _remote_rsync: bool | None = None

    @abstractmethod
    def offered_host_key(self) -> OfferedKey:
        """The cluster's host key, fetched the way this connection goes (ProxyJump hops
        checked as usual), and whether the known_hosts files it reads know it or a
        different one."""

    @abstractmethod
    def rsync_ssh_command(self) -> list[str]:
        """The ``ssh ...`` that rsync runs (the same host, port, user, key and options)."""

    @abstractmethod
    def rsync_destination(self) -> str:
        """How rsync names the host (``host`` or an ssh config alias)."""

    @abstractmethod
    def send_files(self, local: Path, remote: str, files: Sequence[str]) -> None:
        """Copy ``files`` (relative paths) from ``local`` to ``remote``, keeping mtimes."""

    def transfer_probe(self) -> str:
        """Whether the cluster has rsync, asked inside the push's first command (a no-op push
        otherwise pays a round trip for ``command -v rsync``)."""
        if self.cluster.transfer == "sftp" or self._remote_rsync is not None:
            return ""
        return f"if command -v rsync >/dev/null 2>&1; then echo {RSYNC_THERE}; fi"

    def transfer_probed(self, stdout: str) -> None:
        if self.cluster.transfer != "sftp" and self._remote_rsync is None:
            self._remote_rsync = RSYNC_THERE in stdout.splitlines()

    def use_rsync(self) -> bool:
        mode = self.cluster.transfer
        if mode == "sftp":
            return False
        if self._remote_rsync is None:
            self._remote_rsync = self.run_shell("command -v rsync", check=False).ok
        if mode == "rsync" and not (self._remote_rsync and local_rsync_ok()):
            where = "here" if self._remote_rsync else f"on {self.description}"
            raise ConfigError(f"cluster.transfer is rsync but GNU rsync is missing {where}",
                              hint="install rsync, or set cluster.transfer: auto (or sftp)")
        return self._remote_rsync and local_rsync_ok()

    def push_tree(self, local: Path, remote: str, *, exclude: Sequence[str] = (),
                  members: Sequence[str] = ()) -> None:
        local = Path(local)
        if not local.is_dir():
            raise FileNotFoundError(f"{local}: no such folder")
        if self.use_rsync():
            # Members without a trailing slash: rsync puts each under its own name in remote.
            sources = [str(local / m) for m in members] or [f"{local}/"]
            self._rsync(sources, f"{self.rsync_destination()}:{remote}/", exclude,
                        to_cluster=True, make_dir=remote)
            return
        remote_files = parse_listing(self.run_shell(remote_listing_line(remote)).stdout)
        files = [rel for rel in to_copy(local_listing(local), remote_files, exclude)
                 if in_members(rel, members)]
        if files:
            self.send_files(local, remote, files)

    def pull_tree(self, remote: str, local: Path, *, exclude: Sequence[str] = ()) -> None:
        local = Path(local)
        local.mkdir(parents=True, exist_ok=True)
        if self.use_rsync():
            self._rsync(f"{self.rsync_destination()}:{remote}/", f"{local}/", exclude)
            return
        remote_files = parse_listing(self.run_shell(remote_listing_line(remote)).stdout)
        files = to_copy(remote_files, local_listing(local), exclude)
        if files:
            self.fetch_files(remote, local, files)

    def _rsync(self, src: str | Sequence[str], dst: str, exclude: Sequence[str], *,
               to_cluster: bool = False, make_dir: str | None = None) -> None:
        argv = rsync_argv(self.rsync_ssh_command(), src, dst, exclude, to_cluster=to_cluster,
                          make_dir=make_dir)
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            return
        found = classify_ssh_stderr(proc.stderr) if proc.returncode == 255 else None
        if found:
            raise failure(found[0], self.target, found[1],
                          timeout=self.cluster.connect_timeout)
        raise RemoteCommandError(
            f"rsync {src if isinstance(src, str) else ' '.join(src)} -> {dst} failed "
            f"(exit {proc.returncode}): {proc.stderr.strip()}",
            returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
