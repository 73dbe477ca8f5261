"""Where ``hpcnn login`` keeps its ssh master, and how long that login lasts.

Clusters with two-factor login (key + one-time code) cannot be reached by a command that has
no terminal to type the code on: cron, scripts. ``hpcnn login`` therefore opens one OpenSSH
ControlMaster from a terminal and leaves it running; every later hpcnn command for the same
cluster (whatever ``cluster.ssh`` says: paramiko cannot share a master) rides it instead of
logging in again. The master's socket lives at a stable path that cron finds too:
``~/.ssh/hpcnn/<hash of user@host:port and jump hosts>``, in a folder only its owner may use
(anyone who can reach the socket can run commands as the user on the cluster). Beside it a
small JSON file records the login's end: ControlPersist alone counts idle time, so a cron job
every half hour would keep a master open for ever; past its end a command closes the master
instead of riding it, and the next command without a terminal asks for a new login.

Nothing here starts ``ssh``: the OpenSSH transport (openssh.py) does, with its own options.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnn.errors import ConfigError
from hpcnn.fsutil import PRIVATE, atomic_write_text, ensure_dir

if TYPE_CHECKING:
    from hpcnn.remote.ssh_common import Target

def login_dir() -> Path:
    """``~/.ssh/hpcnn``: $HOME as cron sets it (the account's home), so a command run from
    cron finds the master a terminal opened; not $XDG_RUNTIME_DIR, which cron lacks."""
    return Path.home() / ".ssh" / "hpcnn"


def has_logins() -> bool:
    """Whether any login master may be open (a cheap look before resolving the host)."""
    folder = login_dir()
    return (shutil.which("ssh") is not None and folder.is_dir()
            and any(entry.is_socket() for entry in folder.iterdir()))


def _private_folder(folder: Path, *, create: bool) -> bool:
    """Whether ``folder`` exists and is this user's alone (created 0700 when asked); refused
    when it is someone else's or others may enter it: they could plant or reach a socket."""
    if create:
        ensure_dir(folder, PRIVATE)
    try:
        st = folder.stat()
    except FileNotFoundError:
        return False
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(
            f"{folder} holds the connections of `hpcnn login`, but other users can use it "
            f"(mode {stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid})",
            hint=f"make it yours alone: chmod 700 {folder} (and check who created it)")
    return True


@dataclass(frozen=True)
class LoginMaster:
    """The login master for one cluster account: its socket and the file with its end."""

    socket: Path
    target: str

    @classmethod
    def for_target(cls, target: Target) -> LoginMaster:
        """Keyed by where ssh really goes (after the ssh config), so an alias and the spelled
        out host share one login, and by this machine's name, as ssh's own ``%C`` is (a home
        folder shared by several machines holds a socket per machine); hashed so that the
        path stays short (ssh refuses socket paths longer than about 100 characters)."""
        where = f"{socket.gethostname()}|{target}|{target.jump}"
        return cls(login_dir() / hashlib.sha256(where.encode()).hexdigest()[:16], str(target))

    @property
    def facts(self) -> Path:
        return self.socket.with_name(f"{self.socket.name}.json")

    def exists(self) -> bool:
        """A socket is there (alive or not); the folder is checked before it is trusted."""
        return _private_folder(self.socket.parent, create=False) and self.socket.is_socket()

    def prepare(self) -> None:
        """The private folder, and no stale socket where ssh is to create the new one."""
        _private_folder(self.socket.parent, create=True)
        self.forget()

    def until(self) -> float | None:
        """When the login ends (epoch seconds); None when its record is missing or unreadable."""
        try:
            value = json.loads(self.facts.read_text())["until"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return float(value) if isinstance(value, int | float) else None

    def expired(self, now: float | None = None) -> bool:
        end = self.until()
        return end is not None and (now or time.time()) >= end

    def record(self, persist_s: int) -> float:
        """Write the login's end after ssh opened the master; returns it."""
        end = time.time() + persist_s
        atomic_write_text(self.facts, json.dumps({"target": self.target, "until": end,
                                                  "persist_s": persist_s}) + "\n", mode=0o600)
        return end

    def forget(self) -> None:
        """Remove the socket and its record (after the master ended, or a stale one)."""
        self.socket.unlink(missing_ok=True)
        self.facts.unlink(missing_ok=True)

    def client_options(self) -> list[str]:
        """ssh options that ride this master and never start one: should it end between the
        check and the command, ssh connects on its own (and without a terminal is refused
        with the one-time-code message)."""
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={self.socket}"]

    def master_options(self, persist_s: int) -> list[str]:
        return ["-o", "ControlMaster=yes", "-o", f"ControlPath={self.socket}",
                "-o", f"ControlPersist={persist_s}"]
