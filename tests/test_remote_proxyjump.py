"""ProxyJump from the ssh config (issue 3), both transports: the connection goes through the jump
host (sshd's log shows TWO logins, jump + target, where a direct connection shows one), commands
and files work through it, and a jump host that cannot be reached is one clear message.

The jump host and the cluster are the same sshd, which forwards to itself. Besides the login
count (exact while nothing else uses the test bed: CI runs the tests one after another), the
target's own TCP connection is checked: through the jump it was opened by the jump host's sshd,
running as hpcuser, not by this process (the tests run as another user than hpcuser)."""

from __future__ import annotations

import os
import pwd
import re
import socket
import uuid
from pathlib import Path

import pytest

from hpcnn.errors import ConnectionFailed
from hpcnn.remote import connect

pytestmark = pytest.mark.testbed

TRANSPORTS = ["fabric", "openssh"]


def accepted(log: Path) -> int:
    """sshd writes one such line per accepted login (tests/testbed/README.md)."""
    return sum("Accepted publickey for" in line for line in log.read_text().splitlines())


def logged_in_from(log: Path, port: str) -> bool:
    return any(f"Accepted publickey for hpcuser from 127.0.0.1 port {port} " in line
               for line in log.read_text().splitlines())


def socket_owner(local_port: str, remote_port: str) -> int | None:
    """The uid that owns the TCP connection 127.0.0.1:local_port -> :remote_port here."""
    local, remote = f"0100007F:{int(local_port):04X}", f"0100007F:{int(remote_port):04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[7])
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def host_block(name: str, testbed: dict[str, str], *, port: int | str | None = None,
               jump: str | None = None) -> str:
    block = (f"Host {name}\n  HostName {testbed['TESTBED_HOST']}\n"
             f"  Port {port or testbed['TESTBED_PORT']}\n  User {testbed['TESTBED_USER']}\n"
             f"  IdentityFile {testbed['TESTBED_KEY']}\n  IdentitiesOnly yes\n"
             f"  UserKnownHostsFile {testbed['TESTBED_KNOWN_HOSTS']}\n")
    return block + (f"  ProxyJump {jump}\n" if jump else "")


@pytest.fixture
def jump_ssh_config(testbed: dict[str, str], testbed_ssh_config: Path) -> Path:
    """The test's ssh config (HPCNN_SSH_CONFIG) with ``tb-target`` reached through ``tb-jump``
    (the same sshd forwards to itself), and ``tb-broken`` whose jump host's port is closed."""
    testbed_ssh_config.write_text(
        host_block("tb-jump", testbed)
        + host_block("tb-target", testbed, jump="tb-jump")
        + host_block("tb-deadjump", testbed, port=free_port())
        + host_block("tb-broken", testbed, jump="tb-deadjump")
        + "Host *\n  GlobalKnownHostsFile /dev/null\n"
    )
    return testbed_ssh_config


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_connection_goes_through_the_jump_host(cluster_config, jump_ssh_config: Path, testbed,
                                               tmp_path: Path, ssh: str) -> None:
    log = Path(testbed["TESTBED_SSHD_LOG"])
    cfg = cluster_config("torque", ssh, host="tb-target")
    before = accepted(log)
    with connect(cfg) as conn:
        # The target's address as the ssh config names it, not the jump host's.
        assert conn.description == "hpcuser@127.0.0.1:2222"
        assert conn.run(["hostname"]).stdout.strip() == socket.gethostname()
        text = f"through the jump {uuid.uuid4().hex}\n"
        conn.write_text(f"{cfg.remote_dir}/jumped.txt", text)
        assert conn.read_text(f"{cfg.remote_dir}/jumped.txt") == text
        local = tmp_path / "up.bin"
        local.write_bytes(bytes(range(256)) * 4)
        conn.put(local, f"{cfg.remote_dir}/up.bin")
        conn.get(f"{cfg.remote_dir}/up.bin", tmp_path / "down.bin")
        assert (tmp_path / "down.bin").read_bytes() == local.read_bytes()
        port = conn.run_shell('echo "$SSH_CONNECTION"').stdout.split()[1]
        owner = socket_owner(port, testbed["TESTBED_PORT"])
    assert logged_in_from(log, port)
    assert owner == pwd.getpwnam(testbed["TESTBED_USER"]).pw_uid != os.getuid()
    assert accepted(log) - before == 2  # the jump host's login and the target's


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_direct_alias_is_one_login(cluster_config, jump_ssh_config: Path, testbed,
                                   ssh: str) -> None:
    """The control for the proofs above: the jump host's alias alone is one login, on a TCP
    connection of this process's own."""
    log = Path(testbed["TESTBED_SSHD_LOG"])
    cfg = cluster_config("torque", ssh, host="tb-jump")
    before = accepted(log)
    with connect(cfg) as conn:
        port = conn.run_shell('echo "$SSH_CONNECTION"').stdout.split()[1]
        assert socket_owner(port, testbed["TESTBED_PORT"]) == os.getuid()
    assert accepted(log) - before == 1


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_unreachable_jump_host_is_one_clear_error(cluster_config, jump_ssh_config: Path,
                                                  ssh: str) -> None:
    """A jump host on a closed port: the message names the jump host. Fabric knows which hop
    failed; ssh hides the hop's own words (ControlPersist), so it names the jump it went
    through."""
    cfg = cluster_config("torque", ssh, host="tb-broken", connect_timeout=5)
    with pytest.raises(ConnectionFailed) as info, connect(cfg) as conn:
        conn.run(["true"])
    message = str(info.value)
    assert "jump host tb-deadjump" in message and "ProxyJump" in message, message
    if ssh == "fabric":
        dead_port = re.search(r"Host tb-deadjump\n.*?Port (\d+)", jump_ssh_config.read_text(),
                              re.S).group(1)  # type: ignore[union-attr]
        assert f"port {dead_port} refused the connection" in message, message
