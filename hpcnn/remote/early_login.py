"""A cluster login begun before hpcnn's own imports, from a hint the last command of the same
config left; taken over only when it is, word for word, the login the command would begin.

A fresh ``hpcnn status`` spends about 170 ms importing Click, pydantic and its config models
before it knows which host to log in to, and over a laptop's link the login itself then takes
half a second more (TCP, key exchange, authentication: six or seven round trips), one after
the other. So the OpenSSH transport records, per config file, the ``ssh -N`` line that began
its master (``remember``), and the console script (entry.py) starts that same line first
thing (``begin_for``) when ``hpcnn status`` comes back with:

- the same config file, unchanged (inode, size and modification time);
- the same kind of standard input (a terminal or not: it decides ssh's BatchMode);
- a workspace with recorded runs (where there are none, status says so without logging in);
- no ``hpcnn login`` master open (commands ride that one instead).

Once the config is loaded the transport compares the line it would start now with the one
begun early (``take``): the same, and the early login is its master; different in any word
(another host, an option changed in the ssh config), and the early login is ended unused, as
it is when the command ends before its first remote command. A hint never decides where or
how hpcnn logs in. Standard library only, and never an error of its own: a hint that cannot be
read or started only means the login begins at its usual time.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, NamedTuple

CONTROL = "{control}"
"""The master's private folder in a recorded line: a new one for every command."""
MAX_HINTS = 32
MAX_BYTES = 256 * 1024
"""A hints file larger than this is not read (untrusted input is read with bounds)."""


class Hint(NamedTuple):
    """What a hint is filed under and when it applies."""

    config_file: Path
    registry: Path


class EarlyLogin(NamedTuple):
    line: list[str]
    control_dir: str
    proc: subprocess.Popen[bytes]
    err: IO[bytes]

    def cancel(self) -> None:
        """End it unused: the ssh under way, and its master if it got that far."""
        self.proc.kill()
        self.proc.wait()
        self.err.close()
        if os.path.exists(f"{self.control_dir}/master"):
            exit_line = [w.replace(CONTROL, self.control_dir) for w in self.line[:-2]]
            subprocess.run([*exit_line, "-O", "exit", self.line[-1]], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                           check=False)
        shutil.rmtree(self.control_dir, ignore_errors=True)


_pending: EarlyLogin | None = None


def hints_file() -> Path:
    """``$XDG_CACHE_HOME/hpcnn/early-logins.json`` (``~/.cache`` by default), this user's."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcnn" / "early-logins.json"


def _batch() -> bool:
    """As the transport decides it: BatchMode when standard input is not a terminal."""
    return not sys.stdin.isatty()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _read() -> dict[str, dict]:
    path = hints_file()
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or st.st_size > MAX_BYTES:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _status_config(args: list[str]) -> Path | None:
    """The config file of ``hpcnn [--config FILE] status ...`` (not its --help); None for any
    other command line, which Click then parses as always."""
    from hpcnn.config_file import find_config_path

    explicit, i = None, 0
    while i < len(args) and args[i].startswith("--config"):
        if args[i] == "--config" and i + 1 < len(args):
            explicit, i = args[i + 1], i + 2
        elif args[i].startswith("--config="):
            explicit, i = args[i].split("=", 1)[1], i + 1
        else:
            return None
    if i >= len(args) or args[i] != "status" or {"-h", "--help"} & set(args[i + 1:]):
        return None
    path = find_config_path(explicit)
    return path.absolute() if path is not None else None


def begin_for(args: list[str]) -> None:
    """For ``hpcnn status`` (``args``: the command line after ``hpcnn``): begin the login the
    hint for its config records, when every condition above holds."""
    global _pending
    control_dir = None
    try:
        config = _status_config(args)
        if config is None or _pending is not None:
            return
        hint = _read().get(str(config))
        if not isinstance(hint, dict) or hint.get("stat") != _stat_key(config) \
                or hint.get("batch") != _batch():
            return
        line, registry = hint.get("line"), hint.get("registry")
        if not (isinstance(line, list) and len(line) > 3 and line[0] == "ssh"
                and all(isinstance(w, str) for w in line) and any(CONTROL in w for w in line)
                and isinstance(registry, str) and Path(registry).is_file()):
            return
        from hpcnn.remote.login_master import has_logins

        if has_logins():
            return
        control_dir = tempfile.mkdtemp(prefix="hpcnn-ssh-",
                                       dir="/tmp" if os.path.isdir("/tmp") else None)
        err = tempfile.TemporaryFile()  # noqa: SIM115 - the master keeps it; closed by its taker
        proc = subprocess.Popen([w.replace(CONTROL, control_dir) for w in line],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    except Exception:  # noqa: BLE001 - a hint only saves time: never a failure of its own
        if control_dir is not None:
            shutil.rmtree(control_dir, ignore_errors=True)
        return
    _pending = EarlyLogin(line, control_dir, proc, err)
    atexit.register(discard)


def take() -> EarlyLogin | None:
    """The login begun early, now the caller's (to adopt, or to ``cancel``); None if none."""
    global _pending
    early, _pending = _pending, None
    return early


def discard() -> None:
    """End a login begun early that no connection took (the command ended before)."""
    early = take()
    if early is not None:
        early.cancel()


def remember(hint: Hint, line: list[str]) -> None:
    """File ``line`` (the master's ``ssh -N`` line, its folder as CONTROL) for the next command
    of this config; the newest MAX_HINTS configs are kept."""
    try:
        key = str(hint.config_file.absolute())
        entry = {"stat": _stat_key(hint.config_file), "batch": _batch(), "line": line,
                 "registry": str(hint.registry.absolute())}
        hints = _read()
        if hints.get(key) == entry:
            return
        hints.pop(key, None)
        hints[key] = entry
        from hpcnn.fsutil import PRIVATE, atomic_write_text, ensure_dir

        path = hints_file()
        ensure_dir(path.parent, PRIVATE)
        atomic_write_text(path, json.dumps(dict(list(hints.items())[-MAX_HINTS:])), mode=0o600)
    except OSError:
        return
