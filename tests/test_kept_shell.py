"""A remote shell kept open for a series of commands (remote/kept_shell.py, ``status
--watch``'s polls), under both transports against the test bed: each command as it would run
alone, one channel for them all (sessions counted in sshd's log), and a lost or stuck shell
said and replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_remote_connection import TRANSPORTS, hostile

from hpcnn.errors import ConnectionFailed
from hpcnn.remote import connect

pytestmark = pytest.mark.testbed


def sessions(log: Path) -> int:
    """sshd writes one such line per channel that runs a command (tests/testbed/README.md)."""
    return log.read_text().count("Starting session:")


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_commands_in_a_kept_shell_run_as_alone_on_one_channel(cluster_config, testbed,
                                                              ssh: str, marker_tag: str) -> None:
    cfg = cluster_config("torque", ssh)
    log = Path(testbed["TESTBED_SSHD_LOG"])
    name = hostile(marker_tag)
    with connect(cfg) as conn:
        alone = conn.run(["sh", "-c", 'echo "$0 $-"; umask; echo err >&2; exit 3'],
                         check=False)
        conn.keep_shell()
        before = sessions(log)
        kept = conn.run(["sh", "-c", 'echo "$0 $-"; umask; echo err >&2; exit 3'],
                        check=False)
        assert (kept.stdout, kept.stderr, kept.returncode) == (alone.stdout, alone.stderr, 3)
        assert "qsub" in conn.run(["command", "-v", "qsub"]).stdout  # the login shell's PATH
        assert conn.run(["printf", "%s", name]).stdout == name  # no newline added or lost
        assert conn.run(["printf", "a\n\n"]).stdout == "a\n\n"
        assert conn.run(["true"]).stdout == ""
        # each command alone: no input to eat, and its exit, cd and variables end with it
        assert conn.run_shell("cat; echo read").stdout == "read\n"
        assert conn.run_shell("cd /; X=1; exit 5", check=False).returncode == 5
        assert conn.run_shell('pwd; echo "[${X-}]"').stdout == f"{testbed['TESTBED_HOME']}\n[]\n"
        big = conn.run_shell("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo e >&2")
        assert len(big.stdout) == 3_000_001 and big.stderr == "e\n"
        # a command with input runs as before, beside the kept shell
        assert conn.run(["cat"], stdin="data in\n").stdout == "data in\n"
        assert sessions(log) - before == 2  # the kept shell's channel, the one with input


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_a_lost_or_stuck_kept_shell_is_said_and_replaced(cluster_config, ssh: str) -> None:
    cfg = cluster_config("torque", ssh)
    with connect(cfg) as conn:
        conn.keep_shell()
        assert conn.run(["echo", "one"]).stdout == "one\n"
        # the kept shell is the parent of the subshell the login shell runs in
        with pytest.raises(ConnectionFailed, match="ended during a command"):
            conn.run_shell("kill -9 $(ps -o ppid= -p $PPID)")
        assert conn.run(["echo", "two"]).stdout == "two\n"  # a new kept shell
        stuck = conn.run(["sleep", "30"], check=False, timeout=1)
        assert stuck.returncode == 124 and "timed out" in stuck.stderr
        assert conn.run(["echo", "three"]).stdout == "three\n"
