"""Both SSH transports against the test bed: round trips, hostile names as data, ONE connection
per Connection (counted in sshd's log), and every connection fault as one clear message."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hpcnn.errors import ConnectionFailed, RemoteCommandError
from hpcnn.remote import connect
from hpcnn.remote.base import Connection

pytestmark = pytest.mark.testbed

TRANSPORTS = ["fabric", "openssh"]


def hostile(tag: str) -> str:
    """A name with a space, quotes and a command substitution; if it were ever run as code it
    would create ``pwned-<tag>`` in the home of whoever ran it (no ``/``: it is a file name)."""
    return f"a b'c\"$(cd;touch pwned-{tag})"


def accepted(log: Path) -> int:
    """sshd writes one such line per accepted connection (tests/testbed/README.md)."""
    return sum("Accepted publickey for" in line for line in log.read_text().splitlines())


def client_port(conn: Connection) -> str:
    """The client port of the connection a command ran on, as sshd saw it."""
    return conn.run_shell('echo "$SSH_CONNECTION"').stdout.split()[1]


@pytest.mark.parametrize("ssh", TRANSPORTS)
@pytest.mark.parametrize("alias", [True, False], ids=["ssh-config-alias", "cluster-yaml"])
def test_commands_and_files_round_trip(cluster_config, tmp_path: Path, ssh: str, alias: bool,
                                       marker_tag: str) -> None:
    cfg = cluster_config("torque", ssh, alias=alias)
    name = hostile(marker_tag)
    with connect(cfg) as conn:
        assert conn.description == "hpcuser@127.0.0.1:2222"
        res = conn.run(["printf", "%s\n", name, "$HOME"])
        assert res.stdout.splitlines() == [name, "$HOME"]
        assert conn.run(["sh", "-c", "exit 7"], check=False).returncode == 7
        assert conn.run(["cat"], stdin="data in\n").stdout == "data in\n"
        assert "qsub" in conn.run(["command", "-v", "qsub"]).stdout  # the login shell's PATH

        local = tmp_path / "up.bin"
        local.write_bytes(bytes(range(256)) * 10)
        remote = f"{cfg.remote_dir}/{name}/file {name}"
        conn.put(local, remote)
        assert conn.run(["wc", "-c", remote]).stdout.split()[0] == "2560"
        assert conn.read_text(remote + ".tmp-hpcnn") is None  # the temp name was renamed
        back = tmp_path / f"down {name}"
        conn.get(remote, back)
        assert back.read_bytes() == local.read_bytes()
        with pytest.raises(RemoteCommandError):
            conn.get(f"{cfg.remote_dir}/missing", tmp_path / "never")
        assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("ssh", [*TRANSPORTS, "local"])
def test_a_command_line_longer_than_an_argument_may_be_runs(cluster_config, tmp_path: Path,
                                                            ssh: str) -> None:
    """A 300 kB line (a status of several hundred jobs): more than Linux takes as one
    argument (128 KiB), on the ssh command line or in sshd's ``sh -c``."""
    from hpcnn.remote.local import LocalConnection

    cfg = cluster_config("torque", "fabric" if ssh == "local" else ssh)
    parts = [f"x{i}={i}-{'v' * 24}" for i in range(10000)]
    line = "; ".join([*parts, "printf '%s %s\\n' \"$x9999\" \"$(umask)\"", "exit 3"])
    assert len(line) > 300_000
    with (LocalConnection() if ssh == "local" else connect(cfg)) as conn:
        res = conn.run_shell(line, check=False)
    assert (res.returncode, res.stdout) == (3, f"9999-{'v' * 24} 0077\n"), res.stderr[-500:]


@pytest.mark.parametrize("ssh", TRANSPORTS)
@pytest.mark.parametrize("transfer", ["auto", "sftp"])
def test_trees_copy_changed_files_and_never_delete(cluster_config, tmp_path: Path, ssh: str,
                                                   transfer: str, marker_tag: str) -> None:
    cfg = cluster_config("torque", ssh, transfer=transfer)
    name = hostile(marker_tag)
    src = tmp_path / "src"
    (src / name).mkdir(parents=True)
    (src / name / f"{name}.txt").write_text("one")
    (src / "top.txt").write_text("top")
    (src / "skip.tmp").write_text("excluded")
    remote = f"{cfg.remote_dir}/tree {name}"
    with connect(cfg) as conn:
        conn.push_tree(src, remote, exclude=["*.tmp"])
        files = sorted(conn.run(["find", remote, "-type", "f"]).stdout.splitlines())
        assert files == sorted([f"{remote}/{name}/{name}.txt", f"{remote}/top.txt"])
        # a remote-only file survives the next push; a changed file is sent again
        conn.write_text(f"{remote}/remote-only.txt", "keep")
        (src / "top.txt").write_text("top, changed")
        os.utime(src / "top.txt", (1_700_000_000, 1_700_000_000))
        conn.push_tree(src, remote, exclude=["*.tmp"])
        assert conn.read_text(f"{remote}/top.txt") == "top, changed"
        assert conn.read_text(f"{remote}/remote-only.txt") == "keep"

        dest = tmp_path / "dest"
        dest.mkdir()
        (dest / "local-only.txt").write_text("mine")
        conn.pull_tree(remote, dest, exclude=["remote-only*"])
        assert (dest / name / f"{name}.txt").read_text() == "one"
        assert (dest / "top.txt").read_text() == "top, changed"
        assert int((dest / "top.txt").stat().st_mtime) == 1_700_000_000
        assert (dest / "local-only.txt").read_text() == "mine"
        assert not (dest / "remote-only.txt").exists()
        assert not (dest / "skip.tmp").exists()


@pytest.mark.parametrize("ssh", [*TRANSPORTS, "local"])
def test_fetch_files_lands_each_file_whole_and_names_one_that_is_gone(
        cluster_config, tmp_path: Path, ssh: str, marker_tag: str) -> None:
    """Many files in one transfer (what sync uses): each lands under its own name with the
    remote mtime and is announced; a listed file that disappeared on the cluster is named in
    the error, and the files that did come are whole, with no temporary file left."""
    from hpcnn.remote.local import LocalConnection

    cfg = cluster_config("torque", "fabric" if ssh == "local" else ssh)
    remote = f"{cfg.remote_dir}/fetch"
    name = f"{hostile(marker_tag)}/one.txt"
    with connect(cfg) as conn:
        conn.write_text(f"{remote}/{name}", "one")
        conn.write_text(f"{remote}/big.bin", "x" * (3 << 20))
        conn.run(["touch", "-d", "@1700000000", f"{remote}/big.bin"])
    if ssh == "local":  # the same files, read on this machine
        remote = str(tmp_path / "here")
        Path(remote, name).parent.mkdir(parents=True)
        Path(remote, name).write_text("one")
        Path(remote, "big.bin").write_text("x" * (3 << 20))
        os.utime(Path(remote, "big.bin"), (1_700_000_000, 1_700_000_000))
    with (LocalConnection() if ssh == "local" else connect(cfg)) as conn:
        landed: list[str] = []
        conn.fetch_files(remote, tmp_path / "got", [name, "big.bin"], on_file=landed.append)
        assert landed == [name, "big.bin"]
        assert (tmp_path / "got" / name).read_text() == "one"
        assert (tmp_path / "got" / "big.bin").stat().st_size == 3 << 20
        assert int((tmp_path / "got" / "big.bin").stat().st_mtime) == 1_700_000_000
        with pytest.raises((RemoteCommandError, FileNotFoundError), match="gone.txt"):
            conn.fetch_files(remote, tmp_path / "again", ["big.bin", "gone.txt"])
    again = tmp_path / "again"
    assert (again / "big.bin").stat().st_size == 3 << 20  # tar sends what it found
    assert not [p for p in again.rglob("*") if p.name.endswith(".tmp-hpcnn")]


def test_an_archive_from_the_cluster_writes_only_the_files_asked_for(tmp_path: Path) -> None:
    """The archive is the cluster's word: a name not asked for, a link or a folder in it is
    not written here, and a name that leaves the folder stops the transfer."""
    import io
    import tarfile

    from hpcnn.remote.ssh_common import extract_tar_stream

    def archive(*members: tuple[str, bytes | None]) -> io.BytesIO:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for name, body in members:
                info = tarfile.TarInfo(name)
                if body is None:
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size, info.mtime = len(body), 1_700_000_000
                    tar.addfile(info, io.BytesIO(body))
        data.seek(0)
        return data

    got = tmp_path / "got"
    landed, broken = extract_tar_stream(
        archive(("a.txt", b"a"), ("extra.txt", b"not asked"), ("link", None), ("./b/c", b"c")),
        got, ["a.txt", "link", "b/c"], None)
    assert (landed, broken) == ({"a.txt", "b/c"}, None)
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*")) == ["a.txt", "b", "b/c"]
    assert int((got / "a.txt").stat().st_mtime) == 1_700_000_000
    with pytest.raises(RemoteCommandError, match="leaves its folder"):
        extract_tar_stream(archive(("../escape", b"x")), got, ["../escape"], None)
    assert not (tmp_path / "escape").exists()
    landed, broken = extract_tar_stream(io.BytesIO(b"not a tar"), got, ["a.txt"], None)
    assert landed == set() and broken and "unreadable archive" in broken


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_fetch_files_brings_two_names_of_one_file_and_a_list_longer_than_the_window(
        cluster_config, tmp_path: Path, ssh: str) -> None:
    """Hard links come whole under both names (tar would send the second as a link); 20000
    names (2.2 MB of list, more than an SSH channel window) while the archive streams back
    do not wait on each other."""
    cfg = cluster_config("torque", ssh)
    remote = f"{cfg.remote_dir}/many"
    names = [f"d{i // 1000}/{'n' * 96}{i:05d}" for i in range(20000)]
    with connect(cfg) as conn:
        conn.run_shell(f"mkdir -p {remote} && cd {remote} && echo x > one && ln one two && "
                       "for d in $(seq 0 19); do mkdir d$d; done && "
                       "for i in $(seq -w 0 19999); do "
                       f": > d$((10#$i / 1000))/{'n' * 96}$i; done")
        landed: list[str] = []
        done = threading.Event()

        def fetch() -> None:
            conn.fetch_files(remote, tmp_path / "got", ["one", "two", *names],
                             on_file=landed.append)
            done.set()

        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        worker.join(timeout=240)
        assert done.is_set(), f"the fetch did not finish ({len(landed)} files landed)"
    assert (tmp_path / "got" / "two").read_text() == "x\n"
    assert len(landed) == len(names) + 2


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_one_ssh_connection_per_connection_object(cluster_config, testbed, tmp_path: Path,
                                                  ssh: str) -> None:
    """Every command, file and (under openssh) rsync of one Connection rides ONE SSH login.

    Fabric cannot share its transport with rsync's ssh, so it is measured with SFTP transfers;
    sshd's log counts logins (another process using the test bed at the same time would add
    to the count: CI runs the tests one after another)."""
    cfg = cluster_config("torque", ssh, transfer="auto" if ssh == "openssh" else "sftp")
    log = Path(testbed["TESTBED_SSHD_LOG"])
    src = tmp_path / "t"
    src.mkdir()
    (src / "f.txt").write_text("x")
    before = accepted(log)
    with connect(cfg) as conn:
        ports = {client_port(conn)}
        conn.run(["true"])
        conn.write_text(f"{cfg.remote_dir}/a.txt", "a")
        conn.put(src / "f.txt", f"{cfg.remote_dir}/b.txt")
        conn.get(f"{cfg.remote_dir}/b.txt", tmp_path / "b.txt")
        conn.push_tree(src, f"{cfg.remote_dir}/tree")
        conn.pull_tree(f"{cfg.remote_dir}/tree", tmp_path / "pulled")
        ports.add(client_port(conn))
    assert len(ports) == 1
    assert accepted(log) - before == 1


def test_openssh_master_is_private_and_closed(cluster_config) -> None:
    cfg = cluster_config("torque", "openssh")
    conn = connect(cfg)
    control_dir = Path(conn._control_dir)  # type: ignore[attr-defined]
    assert control_dir.stat().st_mode & 0o777 == 0o700
    conn.run(["true"])
    assert (control_dir / "master").is_socket()
    conn.close()
    assert not control_dir.exists()


def masters_on(control_dir: Path) -> list[str]:
    """The ssh processes whose command line names this control folder."""
    found = subprocess.run(["pgrep", "-af", f"ControlPath={control_dir}/"], capture_output=True,
                           text=True, check=False).stdout.splitlines()
    return [line for line in found if " ssh " in f" {line.split(None, 1)[-1]}"]


@pytest.mark.parametrize("then", ["commands", "close"])
def test_a_login_begun_early_is_ridden_or_ended(cluster_config, testbed, then: str) -> None:
    """start() logs in in the background; the commands that follow ride that one login; a
    command that ends before its first remote command (an error, Ctrl-C) ends the login too,
    leaving no ssh process and no folder behind."""
    cfg = cluster_config("torque", "openssh")
    log = Path(testbed["TESTBED_SSHD_LOG"])
    before = accepted(log)
    conn = connect(cfg)
    control_dir = Path(conn._control_dir)  # type: ignore[attr-defined]
    conn.start()
    conn.start()  # a second call begins nothing more
    if then == "commands":
        ports = {client_port(conn), client_port(conn)}
        assert len(ports) == 1 and (control_dir / "master").is_socket()
        conn.close()
        time.sleep(1)  # sshd writes its log line as the login completes
        assert accepted(log) - before == 1
    else:
        conn.close()
    assert not control_dir.exists()
    deadline = time.monotonic() + 10
    while masters_on(control_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert masters_on(control_dir) == []


# ---- faults: each one clear message, nothing left behind


@pytest.fixture
def fake_server() -> Iterator[Callable[[bytes | None], int]]:
    """Start a TCP server on 127.0.0.1 that is not SSH: ``greeting`` is sent then the
    connection closes; None keeps it open and silent (a host that never answers)."""
    sockets: list[socket.socket] = []

    def start(greeting: bytes | None) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        sockets.append(server)

        def serve() -> None:
            while True:
                try:
                    client, _ = server.accept()
                except OSError:
                    return
                sockets.append(client)
                if greeting is not None:
                    client.sendall(greeting)
                    client.close()

        threading.Thread(target=serve, daemon=True).start()
        return server.getsockname()[1]

    yield start
    for sock in sockets:
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection_error(cfg, *, early: bool = False) -> ConnectionFailed:
    """The error of the first command; ``early``: after ``start()`` began the login (what
    ``hpcnn status`` does), which must fail the same way."""
    with pytest.raises(ConnectionFailed) as info, connect(cfg) as conn:
        if early:
            conn.start()
        conn.run(["true"])
    return info.value


EARLY = [("fabric", False), ("openssh", False), ("openssh", True)]
"""Transports, and whether the login began early (openssh's start(); fabric's does nothing)."""


@pytest.mark.parametrize("ssh,early", EARLY)
def test_closed_port_is_refused(cluster_config, ssh: str, early: bool) -> None:
    err = connection_error(cluster_config("torque", ssh, alias=False, port=free_port()),
                           early=early)
    assert "refused the connection" in str(err) and "cluster.port" in str(err)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_wrong_port_with_another_server(cluster_config, fake_server, ssh: str) -> None:
    port = fake_server(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    err = connection_error(cluster_config("torque", ssh, alias=False, port=port))
    assert "closed the connection" in str(err), str(err)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_silent_host_times_out(cluster_config, fake_server, ssh: str) -> None:
    port = fake_server(None)
    err = connection_error(cluster_config("torque", ssh, alias=False, port=port,
                                          connect_timeout=2))
    assert "no answer from" in str(err) and "connect_timeout" in str(err), str(err)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_unknown_host_name(cluster_config, ssh: str) -> None:
    err = connection_error(cluster_config("torque", ssh, alias=False,
                                          host="no-such-host.invalid"))
    assert "cannot reach no-such-host.invalid" in str(err)


@pytest.mark.parametrize("ssh,early", EARLY)
def test_key_not_authorised(cluster_config, tmp_path: Path, ssh: str, early: bool) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    err = connection_error(cluster_config("torque", ssh, alias=False, identity_file=str(key)),
                           early=early)
    assert "refused the login" in str(err) and "authorized_keys" in str(err)


@pytest.fixture
def known_hosts(testbed, testbed_ssh_config: Path, tmp_path: Path) -> Path:
    """An empty known_hosts file that the test's ssh config uses instead of the test bed's."""
    path = tmp_path / "known_hosts"
    path.write_text("")
    testbed_ssh_config.write_text(
        testbed_ssh_config.read_text().replace(testbed["TESTBED_KNOWN_HOSTS"], str(path)))
    return path


@pytest.mark.parametrize("ssh,early", EARLY)
def test_unknown_host_key_is_refused_with_its_fingerprint(cluster_config, known_hosts: Path,
                                                          ssh: str, early: bool) -> None:
    err = connection_error(cluster_config("torque", ssh), early=early)
    expected = subprocess.run(
        ["ssh-keygen", "-lf", "/etc/hpcnn-testbed/ssh_host_ed25519_key.pub"],
        capture_output=True, text=True, check=True).stdout.split()[1]
    assert "not in your known_hosts" in str(err) and expected in str(err), str(err)
    assert "ssh-keyscan -p 2222 127.0.0.1" in str(err)
    assert known_hosts.read_text() == ""  # nothing was added behind the user's back


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_changed_host_key_is_refused(cluster_config, known_hosts: Path, tmp_path: Path,
                                     ssh: str) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known_hosts.write_text(f"[127.0.0.1]:2222 {key}\n")
    err = connection_error(cluster_config("torque", ssh))
    assert "has CHANGED" in str(err) and "ssh-keygen -R" in str(err), str(err)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_remote_dir_not_writable(cluster_config, tmp_path: Path, ssh: str) -> None:
    cfg = cluster_config("torque", ssh, remote_dir="/var/lib/hpcnn-testbed/not-yours")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    with connect(cfg) as conn:
        with pytest.raises(RemoteCommandError, match="Permission denied"):
            conn.put(src / "f.txt", f"{cfg.remote_dir}/f.txt")
        with pytest.raises(RemoteCommandError, match="Permission denied"):
            conn.push_tree(src, cfg.remote_dir)
    assert not Path(cfg.remote_dir).exists()


def test_no_ssh_client_installed(cluster_config, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cluster_config("torque", "openssh")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConnectionFailed, match="ssh client is not installed"):
        connect(cfg)


@pytest.mark.parametrize("ssh", TRANSPORTS)
def test_accept_host_key_shows_fingerprint_and_records_it(cluster_config, known_hosts: Path,
                                                          ssh: str) -> None:
    from hpcnn.services.doctor.remote import accept_host_key

    cfg = cluster_config("torque", ssh)
    shown: list[str] = []
    with connect(cfg) as conn:
        assert not accept_host_key(conn, lambda question: False, shown.append)
        assert known_hosts.read_text() == "" and "SHA256:" in shown[0]
        assert accept_host_key(conn, lambda question: True, shown.append)
    assert "[127.0.0.1]:2222 ssh-ed25519" in known_hosts.read_text()
    with connect(cfg) as conn:
        assert conn.run(["true"]).ok
