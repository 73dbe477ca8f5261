"""Recording a cluster's host key (``hpcnn doctor --accept-host-key``), never blindly.

Only an UNKNOWN key can be recorded, after the user compares its fingerprint with the one the
cluster documents. A CHANGED key is refused with ssh's own warning and the ``ssh-keygen -R``
fix: appending the new key beside the old one would make ssh connect to whoever now answers.
The key is fetched the way the connection itself goes (ProxyJump hops included, each checked
as usual), by the transport in use, so what is shown is what that transport will verify; a
direct ``ssh-keyscan`` would ask another machine when the cluster sits behind a jump host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.fsutil import atomic_write_text
from hpcnn.remote.ssh_common import Failure, failure

if TYPE_CHECKING:
    from hpcnn.remote.ssh_common import SshConnection


class KeyState(str, Enum):
    UNKNOWN = "unknown"
    CHANGED = "changed"
    KNOWN = "known"


@dataclass(frozen=True)
class OfferedKey:
    """The host key a cluster offers, as the connection's transport judged it against the
    known_hosts files it reads."""

    state: KeyState
    name: str
    """The known_hosts name: ``host``, or ``[host]:port`` off port 22."""
    key_type: str = ""
    key_base64: str = ""
    warning: str = ""
    """For a CHANGED key: the warning, in ssh's words, naming the offending entry."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key_type, self.key_base64) if self.key_base64 else ""


def fingerprint(key_type: str, key_base64: str) -> str:
    """``ED25519 SHA256:...``, as ``ssh-keygen -l`` shows it."""
    digest = hashlib.sha256(base64.b64decode(key_base64)).digest()
    kind = key_type.removeprefix("ssh-").split("-")[0].upper()
    return f"{kind} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def changed_warning(key_type: str, key_base64: str, recorded_in: str) -> str:
    """The warning OpenSSH prints for a changed host key (for transports that do not print it)."""
    kind, digest = fingerprint(key_type, key_base64).split()
    return (
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
        "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
        "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
        "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n"
        "It is also possible that a host key has just been changed.\n"
        f"The fingerprint for the {kind} key sent by the remote host is\n{digest}.\n"
        "Please contact your system administrator.\n"
        f"The key recorded for this host is in {recorded_in}."
    )


def known_hosts_line(key: OfferedKey, *, hashed: bool) -> str:
    """One known_hosts entry; ``hashed`` writes the name as ``|1|salt|hmac`` (HashKnownHosts),
    so the file does not list the hosts this account logs in to."""
    name = key.name
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {key.key_type} {key.key_base64}\n"


def record(known_hosts: Path, line: str) -> None:
    """Append ``line`` atomically (temp + rename: an interrupted write never truncates the
    file); an existing file keeps its mode, a new one is 0600 in a 0700 folder. A symlinked
    known_hosts is written where it points."""
    path = Path(os.path.realpath(known_hosts))
    if path.exists():
        text, mode = path.read_text(), path.stat().st_mode & 0o777
    else:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text, mode = "", 0o600
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write_text(path, text + line, mode=mode)


def accept_host_key(conn: SshConnection, confirm: Callable[[str], bool],
                    echo: Callable[[str], None]) -> bool:
    """Show the key the cluster offers and, when the user confirms, record it in the
    known_hosts file the connection reads. Returns whether a key was added; a changed key
    raises ConnectionFailed after ssh's warning."""
    offered = conn.offered_host_key()
    if offered.state is KeyState.CHANGED:
        echo(offered.warning)
        raise failure(Failure.HOSTKEY_CHANGED, conn.target,
                      f"it now offers {offered.fingerprint}" if offered.fingerprint else "")
    if offered.state is KeyState.KNOWN:
        echo(f"the host key of {offered.name} is already in your known_hosts: nothing to add")
        return False
    echo(f"{offered.name} offers:\n{offered.fingerprint}")
    if not confirm(f"Does this match the fingerprint your cluster documents? Add it to "
                   f"{conn.known_hosts_file}"):
        return False
    record(Path(conn.known_hosts_file), known_hosts_line(offered, hashed=conn.hash_known_hosts))
    return True
