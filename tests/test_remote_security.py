"""Security of both SSH transports against the test bed (issue 12): nothing forwarded, every
ProxyJump hop as strict as the target, host keys never accepted blindly, a ControlPath other
users could hijack refused, hpcnn's master closed on SIGTERM, no symlink leaving a tree copied
either way, and everything hpcnn makes on the cluster readable by the account only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_remote_proxyjump import accepted, free_port, host_block

from hpcnn.errors import ConfigError, ConnectionFailed
from hpcnn.remote import connect
from hpcnn.remote.base import Connection
from hpcnn.remote.host_keys import accept_host_key

pytestmark = pytest.mark.testbed

TRANSPORTS = ["fabric", "openssh"]


def mode(conn: Connection, path: str) -> str:
    return conn.run(["stat", "-c", "%a", path]).stdout.strip()


def running(pid: str) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def never_asked(question: str) -> bool:
    raise AssertionError(f"the user was asked: {question}")


@pytest.fixture
def ssh_agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A running ssh-agent of this test's own, in SSH_AUTH_SOCK."""
    out = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    found = dict(part.split("=", 1) for part in out.replace("\n", ";").split(";") if "=" in part)
    monkeypatch.setenv("SSH_AUTH_SOCK", found["SSH_AUTH_SOCK"])
    yield found["SSH_AUTH_SOCK"]
    os.kill(int(found["SSH_AGENT_PID"]), signal.SIGTERM)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_agent_and_ports_are_never_forwarded(cluster_config, testbed_ssh_config: Path,
                                             ssh_agent: str, ssh: str) -> None:
    """``ForwardAgent yes`` and a LocalForward in the user's ssh config: the cluster sees no
    agent socket and nothing listens on the forwarded port here."""
    port = free_port()
    testbed_ssh_config.write_text(testbed_ssh_config.read_text().replace(
        "  IdentitiesOnly yes\n",
        f"  IdentitiesOnly yes\n  ForwardAgent yes\n  LocalForward 127.0.0.1:{port} "
        "127.0.0.1:2222\n", 1))
    with connect(cluster_config("torque", ssh)) as conn:
        seen = conn.run_shell('echo "agent=${SSH_AUTH_SOCK:-none}"').stdout.strip()
        with socket.socket() as probe:
            forwarded = probe.connect_ex(("127.0.0.1", port)) == 0
    assert seen == "agent=none"
    assert not forwarded


@pytest.fixture
def strict_jump_config(testbed: dict[str, str], testbed_ssh_config: Path,
                       tmp_path: Path) -> Path:
    """``tb-target`` (key known) through ``tb-jump``, whose known_hosts is empty, with
    ``StrictHostKeyChecking accept-new`` for every host; returns the jump's known_hosts."""
    jump_known = tmp_path / "jump_known_hosts"
    jump_known.write_text("")
    testbed_ssh_config.write_text(
        host_block("tb-jump", testbed).replace(testbed["TESTBED_KNOWN_HOSTS"], str(jump_known))
        + host_block("tb-target", testbed, jump="tb-jump")
        + "Host *\n  StrictHostKeyChecking accept-new\n  GlobalKnownHostsFile /dev/null\n")
    return jump_known


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_jump_host_key_is_checked_like_the_target(cluster_config, strict_jump_config: Path,
                                                  ssh: str) -> None:
    with pytest.raises(ConnectionFailed), connect(
            cluster_config("torque", ssh, host="tb-target")) as conn:
        conn.run(["true"])
    assert strict_jump_config.read_text() == "", "the jump host's key was recorded silently"


# ---- doctor --accept-host-key


@pytest.fixture
def known_hosts(testbed, testbed_ssh_config: Path, tmp_path: Path) -> Path:
    """A known_hosts path (not created yet) the test's ssh config uses for every host."""
    path = tmp_path / "dot-ssh" / "known_hosts"
    testbed_ssh_config.write_text(
        testbed_ssh_config.read_text().replace(testbed["TESTBED_KNOWN_HOSTS"], str(path)))
    return path


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_changed_host_key_is_never_accepted(cluster_config, known_hosts: Path, tmp_path: Path,
                                            ssh: str) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts.parent.mkdir()
    recorded = "[127.0.0.1]:2222 " + " ".join(Path(f"{other}.pub").read_text().split()[:2]) + "\n"
    known_hosts.write_text(recorded)
    shown: list[str] = []
    with pytest.raises(ConnectionFailed) as info, connect(cluster_config("torque", ssh)) as conn:
        accept_host_key(conn, never_asked, shown.append)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in "\n".join(shown), shown
    assert "has CHANGED" in str(info.value) and "ssh-keygen -R" in str(info.value)
    assert known_hosts.read_text() == recorded


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_unknown_key_is_recorded_hashed_and_private(cluster_config, known_hosts: Path,
                                                    testbed_ssh_config: Path, ssh: str) -> None:
    """HashKnownHosts yes in the user's config: the entry is hashed; the file hpcnn creates is
    0600, and the next connection (same transport) trusts it."""
    testbed_ssh_config.write_text(testbed_ssh_config.read_text() + "  HashKnownHosts yes\n")
    cfg = cluster_config("torque", ssh)
    shown: list[str] = []
    with connect(cfg) as conn:
        assert accept_host_key(conn, lambda question: True, shown.append)
        assert conn.run(["true"]).ok  # the doctor's checks go on over the same connection
    expected = subprocess.run(
        ["ssh-keygen", "-lf", "/etc/hpcnn-testbed/ssh_host_ed25519_key.pub"],
        capture_output=True, text=True, check=True).stdout.split()[1]
    assert expected in "\n".join(shown)
    entry = known_hosts.read_text()
    assert entry.startswith("|1|") and "127.0.0.1" not in entry, entry
    assert known_hosts.stat().st_mode & 0o777 == 0o600
    with connect(cfg) as conn:
        assert conn.run(["true"]).ok
        assert not accept_host_key(conn, never_asked, shown.append)  # already known


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_accept_fetches_the_key_through_the_jump_host(cluster_config, testbed,
                                                      testbed_ssh_config: Path, tmp_path: Path,
                                                      ssh: str) -> None:
    """The target's known_hosts is empty, the jump host's key is known: the key is fetched
    through the jump host (its login is in sshd's log), as the connection goes."""
    target_known = tmp_path / "target_known_hosts"
    testbed_ssh_config.write_text(
        host_block("tb-jump", testbed)
        + host_block("tb-target", testbed, jump="tb-jump").replace(
            testbed["TESTBED_KNOWN_HOSTS"], str(target_known))
        + "Host *\n  GlobalKnownHostsFile /dev/null\n")
    cfg = cluster_config("torque", ssh, host="tb-target")
    with pytest.raises(ConnectionFailed) as info, connect(cfg) as conn:
        conn.run(["true"])
    hint = info.value.hint or ""
    assert "--accept-host-key" in hint and "ssh-keyscan" not in hint, hint  # not a direct scan
    log = Path(testbed["TESTBED_SSHD_LOG"])
    before = accepted(log)
    with connect(cfg) as conn:
        assert accept_host_key(conn, lambda question: True, lambda text: None)
    assert accepted(log) - before >= 1, "no login on the jump host: the key came directly"
    assert "[127.0.0.1]:2222 ssh-ed25519 " in target_known.read_text()


# ---- the ControlMaster


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_control_path_in_a_shared_folder_is_refused(cluster_config, testbed_ssh_config: Path,
                                                    tmp_path: Path, ssh: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone can create a socket there first
    testbed_ssh_config.write_text(testbed_ssh_config.read_text().replace(
        "  IdentitiesOnly yes\n",
        f"  IdentitiesOnly yes\n  ControlMaster auto\n  ControlPath {shared}/cm-%C\n", 1))
    with pytest.raises(ConfigError, match="ControlPath") as info, connect(
            cluster_config("torque", ssh)) as conn:
        conn.run(["true"])
    assert str(shared) in str(info.value) and "~/.ssh/cm-%C" in (info.value.hint or "")


def test_sigterm_closes_our_master(cluster_config, tmp_path: Path) -> None:
    """hpcnn killed by SIGTERM (a cron timeout) ends its master and removes its folder, as a
    normal exit does, instead of leaving them for ControlPersist."""
    cfg = cluster_config("torque", "openssh")
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from hpcnn.config import load_config_file
        from hpcnn.remote import connect
        with connect(load_config_file(Path({str(cfg.source)!r}))) as conn:
            conn.run(["true"])
            print(conn._control_dir, flush=True)
            time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        control_dir = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        assert (control_dir / "master").is_socket()
        master = subprocess.run(["pgrep", "-f", f"{control_dir}/master"], capture_output=True,
                                text=True, check=False).stdout.split()
        assert master, "no master process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not control_dir.exists()
    deadline = time.monotonic() + 5  # `ssh -O exit` returns as the master begins to exit
    while [pid for pid in master if running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in master if running(pid)], "the master outlived hpcnn"


# ---- transfers and modes


@pytest.mark.parametrize("ssh", TRANSPORTS)
@pytest.mark.parametrize("transfer", ["auto", "sftp"])
def test_symlinks_leaving_the_tree_are_never_copied(cluster_config, tmp_path: Path, ssh: str,
                                                    transfer: str) -> None:
    """A local link to /etc/passwd is not pushed (neither as a link nor as its content), and a
    link made on the cluster to /etc/passwd (or /etc) does not come back by a pull."""
    cfg = cluster_config("torque", ssh, transfer=transfer)
    src = tmp_path / "src"
    src.mkdir()
    (src / "data.txt").write_text("data")
    (src / "leak").symlink_to("/etc/passwd")
    (src / "leakdir").symlink_to("/etc")
    remote = f"{cfg.remote_dir}/tree"
    with connect(cfg) as conn:
        conn.push_tree(src, remote)
        pushed = conn.run(["find", remote, "-mindepth", "1", "-printf", "%P\n"]).stdout.split()
        assert sorted(pushed) == ["data.txt"]
        conn.run(["ln", "-s", "/etc/passwd", f"{remote}/evil"])
        conn.run(["ln", "-s", "/etc", f"{remote}/evildir"])
        dest = tmp_path / "dest"
        conn.pull_tree(remote, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["data.txt"]


@pytest.mark.parametrize("ssh", TRANSPORTS)
@pytest.mark.parametrize("transfer", ["auto", "sftp"])
def test_what_hpcnn_makes_on_the_cluster_is_private(cluster_config, tmp_path: Path, ssh: str,
                                                    transfer: str) -> None:
    """Folders 0700 and files 0600 whatever the cluster's umask: made by commands, written,
    put, and pushed (from a laptop file that is 0644)."""
    cfg = cluster_config("torque", ssh, transfer=transfer)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "image.nrrd").write_text("scan")
    for path in (src, src / "sub", src / "sub" / "image.nrrd"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    base = cfg.remote_dir
    with connect(cfg) as conn:
        conn.run_shell(f"mkdir -p {base}/made && : > {base}/made/file")
        conn.write_text(f"{base}/written/file.txt", "text")
        conn.put(src / "sub" / "image.nrrd", f"{base}/put/image.nrrd")
        conn.push_tree(src, f"{base}/pushed")
        modes = {path: mode(conn, f"{base}/{path}") for path in (
            "", "made", "made/file", "written", "written/file.txt", "put", "put/image.nrrd",
            "pushed", "pushed/sub", "pushed/sub/image.nrrd")}
    assert modes == {path: "600" if "." in path or path.endswith("file") else "700"
                     for path in modes}, modes
