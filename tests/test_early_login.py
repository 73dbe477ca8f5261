"""``hpcnn status`` begins its OpenSSH login before its imports, from the line the last command
of the same config filed (remote/early_login.py), and rides it only when the line is the very
one it would start: against the test bed's sshd, logins counted in its log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_remote_connection import accepted, client_port, masters_on

from hpcnn.remote import connect, early_login
from hpcnn.remote.early_login import Hint, hints_file
from hpcnn.workspace import Workspace

pytestmark = pytest.mark.testbed


@pytest.fixture
def filed(cluster_config) -> tuple[object, Hint]:
    """An openssh config whose workspace has a registry, and the hint its first status filed."""
    cfg = cluster_config("torque", "openssh")
    registry = Workspace(cfg.workspace).registry_file
    registry.parent.mkdir(parents=True)
    registry.write_bytes(b"")
    hint = Hint(cfg.source, registry)
    with connect(cfg) as conn:
        conn.start(hint)
        conn.run(["true"])
    return cfg, hint


def begin_in_child(config: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """begin_for in a fresh interpreter, as the console script runs it first thing."""
    code = ("import json, sys\n"
            "from hpcnn.remote import early_login\n"
            f"early_login.begin_for({['--config', str(config), *args]!r})\n"
            "e = early_login.take()\n"
            "print(json.dumps({'begun': e is not None, 'pydantic': 'pydantic' in sys.modules,\n"
            "                  'line': e.line if e else None}))\n"
            "if e:\n"
            "    e.cancel()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})},
                         stdin=subprocess.DEVNULL)
    return json.loads(out.stdout)


def test_the_filed_login_begins_before_the_imports_and_is_ridden(filed, testbed) -> None:
    cfg, hint = filed
    path = hints_file()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    entry = json.loads(path.read_text())[str(cfg.source.absolute())]
    assert entry["line"][0] == "ssh" and entry["line"][-2:] == ["-N", cfg.cluster.host]

    child = begin_in_child(cfg.source, "status", "--json")
    assert child == {"begun": True, "pydantic": False, "line": entry["line"]}

    log = Path(testbed["TESTBED_SSHD_LOG"])
    before = accepted(log)
    early_login.begin_for(["--config", str(cfg.source), "status"])
    control_dir = early_login._pending.control_dir  # type: ignore[union-attr]
    conn = connect(cfg)
    conn.start(hint)
    assert conn._control_dir == control_dir  # type: ignore[attr-defined]
    assert len({client_port(conn), client_port(conn)}) == 1
    conn.close()
    time.sleep(1)  # sshd writes its log line as the login completes
    assert accepted(log) - before == 1
    assert not Path(control_dir).exists() and masters_on(Path(control_dir)) == []


def test_a_login_begun_from_another_line_is_ended_unused(filed) -> None:
    """The hint says ConnectTimeout=7, the config now gives another: the early login goes,
    the command logs in with its own line."""
    cfg, hint = filed
    hints = json.loads(hints_file().read_text())
    line = hints[str(cfg.source.absolute())]["line"]
    changed = [w if not w.startswith("ConnectTimeout=") else "ConnectTimeout=7" for w in line]
    assert changed != line
    hints[str(cfg.source.absolute())]["line"] = changed
    hints_file().write_text(json.dumps(hints))

    early_login.begin_for(["--config", str(cfg.source), "status"])
    early_dir = Path(early_login._pending.control_dir)  # type: ignore[union-attr]
    with connect(cfg) as conn:
        conn.start(hint)
        assert Path(conn._control_dir) != early_dir  # type: ignore[attr-defined]
        assert not early_dir.exists()
        assert conn.run(["echo", "ok"]).stdout == "ok\n"
    deadline = time.monotonic() + 10
    while masters_on(early_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert masters_on(early_dir) == []
    assert json.loads(hints_file().read_text())[str(cfg.source.absolute())]["line"] == line


@pytest.mark.parametrize("case", ["as filed", "config edited", "no registry", "help",
                                  "another command", "login master open", "hints not private",
                                  "a terminal then"])
def test_a_login_begins_only_when_everything_is_as_filed(filed, tmp_path: Path,
                                                        case: str) -> None:
    cfg, hint = filed
    args, env = ["status"], {}
    if case == "config edited":
        st = cfg.source.stat()
        os.utime(cfg.source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif case == "no registry":
        hint.registry.unlink()
    elif case == "help":
        args = ["status", "--help"]
    elif case == "another command":
        args = ["sync"]
    elif case == "login master open":
        home = tmp_path / "home"
        (home / ".ssh" / "hpcnn").mkdir(parents=True)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(home / ".ssh" / "hpcnn" / "master"))
        env = {"HOME": str(home)}
    elif case == "hints not private":
        hints_file().chmod(0o666)
    elif case == "a terminal then":
        hints = json.loads(hints_file().read_text())
        hints[str(cfg.source.absolute())]["batch"] = False
        hints_file().write_text(json.dumps(hints))
    assert begin_in_child(cfg.source, *args, env=env)["begun"] is (case == "as filed")
