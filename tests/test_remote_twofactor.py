"""Clusters with two-factor login (key + one-time code), on the test bed's second sshd
(tests/testbed/twofactor.sh: pam_oath, TOTP). A person is played through a pseudo-terminal:
the prompt is read there and a fresh code (``oathtool --totp``) typed back. Cron is played with
``env -i``, working directory ``/``, stdin /dev/null and a new session (no terminal at all)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need

from hpcnn.remote.ssh_common import ONE_TIME_CODE_MESSAGE, Failure, classify_ssh_stderr

HPCNN = [sys.executable, "-m", "hpcnn.cli.entry"]


@pytest.fixture(scope="module")
def twofactor(testbed: dict[str, str]) -> dict[str, str]:
    need("TESTBED_2FA_PORT" in testbed and shutil.which("oathtool") is not None,
         "the two-factor sshd is not up (run tests/testbed/twofactor.sh as root)")
    need(os.access(testbed.get("TESTBED_2FA_SECRET_FILE", "/"), os.R_OK),
         "the TOTP secret of the test bed is not readable (run the tests as root)")
    return testbed


_last_counter = 0


def fresh_code(twofactor: dict[str, str]) -> str:
    """A code pam_oath has not seen: it takes each code once and only codes newer than the
    last one used, so this is the code of the window after the last used one (or of now),
    which is valid at once (window=20)."""
    global _last_counter
    secret = Path(twofactor["TESTBED_2FA_SECRET_FILE"]).read_text().strip()
    now = int(time.time()) // 30

    def code(counter: int) -> str:
        return subprocess.run(["oathtool", "--totp", "-N", f"@{counter * 30}", secret],
                              capture_output=True, text=True, check=True).stdout.strip()

    fields = next((line.split() for line in
                   Path(twofactor["TESTBED_2FA_USERS_FILE"]).read_text().splitlines()
                   if line.split()[1:2] == [twofactor["TESTBED_USER"]]), [])
    used = fields[5] if len(fields) > 5 else ""
    last = max((c for c in range(now - 20, now + 21) if code(c) == used), default=0)
    _last_counter = max(now, last + 1, _last_counter + 1)
    if _last_counter > now + 15:  # runs in quick succession: let the clock catch up
        time.sleep((_last_counter - now - 15) * 30)
    return code(_last_counter)


@pytest.fixture
def home() -> Iterator[Path]:
    """A short $HOME (ssh sockets must fit in about 100 characters); every login master left
    in it is closed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="h2fa-", dir="/tmp"))
    yield folder
    for sock in (folder / ".ssh" / "hpcnn").glob("*"):
        if sock.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                           capture_output=True, check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def configs(twofactor: dict[str, str], cluster_config, tmp_path: Path) -> dict[str, Path]:
    """cluster.yaml for the two-factor sshd, one per transport, and the ssh config (the
    two-factor sshd's known_hosts) that HPCNN_SSH_CONFIG points at."""
    ssh_config = tmp_path / "ssh_config_2fa"
    ssh_config.write_text(f"Host *\n  UserKnownHostsFile {twofactor['TESTBED_2FA_KNOWN_HOSTS']}\n"
                          "  GlobalKnownHostsFile /dev/null\n")
    (tmp_path / "ws").mkdir(exist_ok=True)
    found = {ssh: cluster_config("torque", ssh, alias=False,
                                 port=int(twofactor["TESTBED_2FA_PORT"])).source
             for ssh in ("openssh", "fabric")}
    return {**found, "ssh_config": ssh_config}


def environment(home: Path, configs: dict[str, Path]) -> dict[str, str]:
    """What cron gives a job (env -i, then HOME and a short PATH), plus the test's ssh config."""
    return {"HOME": str(home), "PATH": "/usr/bin:/bin",
            "HPCNN_SSH_CONFIG": str(configs["ssh_config"])}


def cron(args: list[str], home: Path, configs: dict[str, Path], transport: str = "openssh",
         argv: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """An hpcnn command (or ``argv``) run the way cron runs it: no terminal, no session of
    the user's."""
    return subprocess.run(argv or [*HPCNN, "--config", str(configs[transport]), *args], cwd="/",
                          env=environment(home, configs), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, start_new_session=True, timeout=120,
                          check=False)


def on_terminal(args: list[str], home: Path, configs: dict[str, Path], twofactor: dict[str, str],
                transport: str = "openssh", timeout: float = 120,
                argv: list[str] | None = None, wrong: bool = False
                ) -> tuple[int, str, list[str]]:
    """An hpcnn command (or ``argv``) on a pseudo-terminal, as a person runs it; each code
    prompt is answered with a fresh code (``wrong``: a code that is never right). Returns
    (exit status, all the terminal showed, the codes typed)."""
    argv = argv or [*HPCNN, "--config", str(configs[transport]), *args]
    env = environment(home, configs)
    pid, fd = pty.fork()
    if pid == 0:  # the child, whose controlling terminal is the pty
        try:
            os.chdir("/")
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    shown, typed, status = b"", [], None
    deadline = time.monotonic() + timeout
    try:
        while status is None:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"{' '.join(argv)} still running after {timeout} s:\n"
                            + shown.decode(errors="replace"))
            chunk = b""
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: nothing holds the terminal any more
                    time.sleep(0.05)
            shown += chunk
            if shown.count(b"One-time password") > len(typed):
                typed.append("000000" if wrong else fresh_code(twofactor))
                os.write(fd, typed[-1].encode() + b"\n")
            if not chunk:
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(wait_status)
    finally:
        os.close(fd)
    return status, shown.decode(errors="replace"), typed


def logins(twofactor: dict[str, str]) -> int:
    """Logins with key + code the two-factor sshd has accepted so far."""
    return Path(twofactor["TESTBED_2FA_SSHD_LOG"]).read_text().count(
        "Accepted keyboard-interactive/pam for")


def test_classify_two_factor_refusals() -> None:
    """After the key, sshd lists only what is missing: a code. A list that still holds
    publickey means the key itself was refused, which stays "check your key"."""
    code = classify_ssh_stderr("hpcuser@host: Permission denied (keyboard-interactive).\n")
    assert code and code[0] == Failure.ONE_TIME_CODE
    for text in ("u@h: Permission denied (publickey,keyboard-interactive).",
                 "u@h: Permission denied (publickey).", "u@h: Permission denied (password)."):
        found = classify_ssh_stderr(text)
        assert found and found[0] == Failure.AUTH, text


def test_a_folder_others_can_enter_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever reaches a login socket runs commands on the cluster as the user."""
    from hpcnn.errors import ConfigError
    from hpcnn.remote.login_master import LoginMaster, login_dir
    from hpcnn.remote.ssh_common import Target

    monkeypatch.setenv("HOME", str(tmp_path))
    master = LoginMaster.for_target(Target("cluster.example.org", 22, "me"))
    assert master.socket.parent == login_dir() == tmp_path / ".ssh" / "hpcnn"
    assert not master.exists()
    master.prepare()
    assert stat.S_IMODE(login_dir().stat().st_mode) == 0o700
    assert LoginMaster.for_target(Target("cluster.example.org", 22, "me")) == master
    assert LoginMaster.for_target(Target("cluster.example.org", 2222, "me")) != master
    os.chmod(login_dir(), 0o755)
    with pytest.raises(ConfigError, match="other users can use it"):
        master.exists()


@pytest.mark.parametrize("transport", ["fabric", "openssh"])
def test_without_a_terminal_the_message_says_log_in(transport: str, configs: dict[str, Path],
                                                     home: Path) -> None:
    """Cron without a login: the one message, exit 3, never the advice to check the key."""
    res = cron(["doctor"], home, configs, transport)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"ssh reachable: {ONE_TIME_CODE_MESSAGE}" in res.stdout
    assert "identity_file" not in res.stdout + res.stderr


@pytest.mark.parametrize("transport", ["fabric", "openssh"])
def test_connection_error_is_the_message_with_exit_3(
        transport: str, configs: dict[str, Path], home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What every command (sync under cron too) gets from the connection itself."""
    from hpcnn.config import load_config_file
    from hpcnn.errors import EXIT_UNREACHABLE, ConnectionFailed
    from hpcnn.remote import connect

    for name, value in environment(home, configs).items():
        monkeypatch.setenv(name, value)
    with open(os.devnull) as nothing:
        monkeypatch.setattr(sys, "stdin", nothing)
        with pytest.raises(ConnectionFailed) as caught, connect(
                load_config_file(configs[transport])) as conn:
            conn.run_shell("true")
    assert str(caught.value).splitlines()[0] == ONE_TIME_CODE_MESSAGE
    assert caught.value.exit_code == EXIT_UNREACHABLE


@pytest.mark.parametrize("transport", ["fabric", "openssh"])
def test_a_person_types_the_code_once_per_command(
        transport: str, twofactor: dict[str, str], configs: dict[str, Path], home: Path) -> None:
    """On a terminal both transports ask for the code, hidden as it is typed, once for the
    whole doctor (a dozen remote commands on one connection)."""
    before = logins(twofactor)
    code, shown, typed = on_terminal(["doctor"], home, configs, twofactor, transport)
    assert code == 0, shown
    assert "all checks passed" in shown
    assert len(typed) == 1, shown
    assert not re.search(rf"One-time password[^\n]*{typed[0]}", shown)
    assert logins(twofactor) == before + 1


_PUSH = """
import sys
from pathlib import Path
from hpcnn.config import load_config_file
from hpcnn.remote import connect
cfg = load_config_file(Path(sys.argv[1]))
with connect(cfg) as conn:
    conn.push_tree(Path(sys.argv[2]), f"{cfg.remote_dir}/pushed")
    print("remote:", conn.run(["cat", f"{cfg.remote_dir}/pushed/a.txt"]).stdout)
"""


def test_fabric_copies_files_on_the_one_login(twofactor: dict[str, str],
                                              configs: dict[str, Path], home: Path,
                                              tmp_path: Path) -> None:
    """rsync would log in again through the system ssh and ask for a second code (the next
    one, up to 30 s later): after a typed code, Fabric copies over SFTP on its connection."""
    local = tmp_path / "to-push"
    local.mkdir()
    (local / "a.txt").write_text("pushed with one code\n")
    status, shown, typed = on_terminal(
        [], home, configs, twofactor,
        argv=[sys.executable, "-c", _PUSH, str(configs["fabric"]), str(local)])
    assert status == 0, shown
    assert "remote: pushed with one code" in shown
    assert len(typed) == 1, shown


def test_login_then_cron_rides_it_until_logout(twofactor: dict[str, str],
                                               configs: dict[str, Path], home: Path,
                                               tmp_path: Path) -> None:
    code, shown, typed = on_terminal(["login", "--persist", "10m"], home, configs, twofactor)
    assert code == 0, shown
    assert len(typed) == 1 and "logged in to hpcuser@127.0.0.1:" in shown, shown
    folder = home / ".ssh" / "hpcnn"
    sockets = [p for p in folder.iterdir() if p.is_socket()]
    assert len(sockets) == 1
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(sockets[0].stat().st_mode) == 0o600
    record = json.loads(sockets[0].with_name(f"{sockets[0].name}.json").read_text())
    assert 590 <= record["until"] - time.time() <= 600

    before = logins(twofactor)
    for transport in ("openssh", "fabric"):  # fabric's commands ride the master too
        res = cron(["doctor"], home, configs, transport)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "all checks passed" in res.stdout
    local = tmp_path / "to-push"
    local.mkdir()
    (local / "a.txt").write_text("copied by cron\n")
    res = cron([], home, configs, argv=[sys.executable, "-c", _PUSH, str(configs["fabric"]),
                                        str(local)])
    assert res.returncode == 0 and "remote: copied by cron" in res.stdout, res.stderr
    assert logins(twofactor) == before, "a command logged in again instead of riding the login"
    again = cron(["login"], home, configs, "fabric")
    assert again.returncode == 0 and "already logged in" in again.stdout, again.stderr

    out = cron(["logout"], home, configs)
    assert out.returncode == 0 and "logged out of hpcuser@127.0.0.1:" in out.stdout, out.stderr
    assert not any(p.is_socket() for p in folder.iterdir())
    assert subprocess.run(["pgrep", "-f", str(sockets[0])], capture_output=True).returncode == 1
    res = cron(["doctor"], home, configs)
    assert res.returncode == 3 and ONE_TIME_CODE_MESSAGE in res.stdout, res.stdout
    assert "not logged in" in cron(["logout"], home, configs).stdout


def test_a_login_past_its_end_is_closed_not_ridden(twofactor: dict[str, str],
                                                   configs: dict[str, Path], home: Path) -> None:
    """ControlPersist counts idle time only (a sync every half hour would keep a master for
    ever): the login's end, recorded beside the socket, is what a command obeys."""
    code, shown, _ = on_terminal(["login"], home, configs, twofactor)
    assert code == 0, shown
    sock = next(p for p in (home / ".ssh" / "hpcnn").iterdir() if p.is_socket())
    facts = sock.with_name(f"{sock.name}.json")
    record = json.loads(facts.read_text())
    assert 8 * 3600 - 60 <= record["until"] - time.time() <= 8 * 3600  # the default, 8h
    facts.write_text(json.dumps({**record, "until": time.time() - 1}))  # as if 8 h went by
    res = cron(["doctor"], home, configs)
    assert res.returncode == 3 and ONE_TIME_CODE_MESSAGE in res.stdout, res.stdout
    assert not sock.exists()
    assert subprocess.run(["pgrep", "-f", str(sock)], capture_output=True).returncode == 1


def test_a_refused_code_is_said_so(twofactor: dict[str, str], configs: dict[str, Path],
                                   home: Path) -> None:
    """A wrong code at `hpcnn login` is a refused code, not a key problem, and leaves no
    socket behind."""
    code, shown, typed = on_terminal(["login"], home, configs, twofactor, wrong=True)
    assert code == 3, shown
    assert typed and "took your key but refused the one-time code" in shown, shown
    assert not any(p.is_socket() for p in (home / ".ssh" / "hpcnn").iterdir())


def test_login_needs_a_terminal_and_a_duration(configs: dict[str, Path], home: Path) -> None:
    res = cron(["login"], home, configs)
    assert res.returncode == 2 and "needs a terminal" in res.stderr, res.stderr
    res = cron(["login", "--persist", "all day"], home, configs)
    assert res.returncode == 2 and "not a duration" in res.stderr, res.stderr
    assert not (home / ".ssh" / "hpcnn").exists() or not any((home / ".ssh" / "hpcnn").iterdir())
