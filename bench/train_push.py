"""``hpcnn push`` through the test bed: a no-op push vs ``ssh host true`` + a no-op ``rsync -a``
of the same tree (the same connections; goal <= 1.3x, 0 file bytes moved), the bytes a re-push
moves after one case changed (goal <= 1.1x that case), and SSH logins per push counted in the
test bed's sshd log. Beside them, the same push with ``transfer: sftp`` (paramiko's SFTP over the
``fabric`` transport, for clusters without rsync) vs ``sftp -b`` of the same tree: a first push
into an empty folder, and a no-op push (``sftp -b`` has no incremental mode: it sends it all).

Run as root with the test bed up (tests/testbed/up.sh):
    python bench/train_push.py [--files 1000] [--mb 1000] [--repeats 7]

Both sides are fresh processes with the openssh transport and the same ssh config. Bytes on the
wire are counted by a ProxyCommand relay (this file run with ``--relay``) in separate runs, so
that the relay's cost stays out of the timings.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import compare, report, time_command  # noqa: E402

ENV = Path("/etc/hpcnn-testbed/testbed.env")
DATASET = "Dataset900_Bench"


def relay(host: str, port: int, count_file: str) -> None:
    """ProxyCommand: stdin/stdout <-> host:port; appends the bytes seen to ``count_file``."""
    def stop(*_: object) -> None:
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, stop)  # ssh ends its ProxyCommand with a signal: count anyway
    sock = socket.create_connection((host, port))
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "up")
    sel.register(sock, selectors.EVENT_READ, "down")
    moved = 0
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "up":
                    data = os.read(sys.stdin.fileno(), 1 << 16)
                    if not data:
                        sock.shutdown(socket.SHUT_WR)
                        sel.unregister(sys.stdin.fileno())
                        continue
                    sock.sendall(data)
                else:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    os.write(sys.stdout.fileno(), data)
                moved += len(data)
    finally:
        with open(count_file, "a", encoding="utf-8") as out:
            out.write(f"{moved}\n")


def wire_bytes(count_file: Path, argv: list[str], env: dict[str, str]) -> int:
    count_file.write_text("")
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return sum(int(n) for n in count_file.read_text().split())


def logins(log: Path) -> int:
    return sum("Accepted publickey for" in line for line in log.read_text().splitlines())


def make_tree(root: Path, files: int, total_mb: int) -> list[Path]:
    """``files`` files of random bytes, ``total_mb`` in all, as 10 "cases" of equal size."""
    folder = root / "nnUNet_preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True)
    size = total_mb * (1 << 20) // files
    made = []
    for n in range(files):
        path = folder / f"case_{n % 10:03d}_{n // 10:04d}.b2nd"
        path.write_bytes(os.urandom(size))
        made.append(path)
    return made


def sftp_push(work: Path, tree: Path, ssh_config: Path, env: dict[str, str], ssh: list[str],
              remote: str, repeats: int) -> None:
    """``transfer: sftp`` vs ``sftp -b``: a first push into a new folder, then a no-op one."""
    config = work / "cluster-sftp.yaml"
    count = iter(range(10**6))

    def fresh_config() -> None:  # a new remote_dir each time: every push is a first one
        folder = f"{remote}/sftp{next(count)}"
        config.write_text(f"workspace: {work}\ncluster: {{scheduler: torque, host: testbed, "
                          f"ssh: fabric, transfer: sftp, remote_dir: {folder}}}\n")

    push = [sys.executable, "-m", "hpcnn.cli.main", "--config", str(config), "push",
            "--dataset", DATASET]
    batch = work / "sftp-batch"
    plain = iter(range(10**6))

    def sftp_b() -> float:
        folder = f"{remote}/plain-sftp{next(plain)}"
        batch.write_text(f"-mkdir {folder}\nput -r {tree} {folder}/{DATASET}\n")
        return time_command(["sftp", "-F", str(ssh_config), "-b", str(batch), "-q", "testbed"])

    def first_push() -> float:
        fresh_config()
        return time_command(push, env=env)

    b, c, ratio = compare(sftp_b, first_push, repeats=max(2, repeats // 2), warmup=0)
    report("first hpcnn push over SFTP", "sftp -b put -r of the same tree", b, c, ratio,
           goal="reported")
    b, c, ratio = compare(sftp_b, lambda: time_command(push, env=env), repeats=repeats, warmup=1)
    report("no-op hpcnn push over SFTP", "sftp -b put -r (sends everything again)", b, c, ratio,
           goal="reported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--mb", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--relay", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay(args.relay[0], int(args.relay[1]), args.relay[2])
        return
    facts = dict(line.split("=", 1) for line in ENV.read_text().splitlines() if "=" in line)
    log = Path(facts["TESTBED_SSHD_LOG"])
    work = Path(tempfile.mkdtemp(prefix="hpcnn-bench-push-"))
    host_lines = (f"  HostName {facts['TESTBED_HOST']}\n  Port {facts['TESTBED_PORT']}\n"
                  f"  User {facts['TESTBED_USER']}\n  IdentityFile {facts['TESTBED_KEY']}\n"
                  f"  IdentitiesOnly yes\n  UserKnownHostsFile {facts['TESTBED_KNOWN_HOSTS']}\n")
    counts = work / "bytes"
    ssh_config = work / "ssh_config"
    ssh_config.write_text(f"Host testbed\n{host_lines}")
    counted = work / "ssh_config_counted"
    counted.write_text(f"Host testbed\n{host_lines}  ProxyCommand {sys.executable} "
                       f"{Path(__file__).resolve()} --relay %h %p {counts}\n")
    remote = f"hpcnn-bench-push-{os.getpid()}"
    (work / "cluster.yaml").write_text(
        f"workspace: {work}\ncluster: {{scheduler: torque, host: testbed, ssh: openssh, "
        f"remote_dir: {remote}/hpcnn}}\n")
    env = {**os.environ, "HPCNN_SSH_CONFIG": str(ssh_config)}
    env_counted = {**os.environ, "HPCNN_SSH_CONFIG": str(counted)}
    cases = make_tree(work, args.files, args.mb)
    tree = work / "nnUNet_preprocessed" / DATASET
    push = [sys.executable, "-m", "hpcnn.cli.main", "--config", str(work / "cluster.yaml"),
            "push", "--dataset", DATASET]
    ssh = ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "testbed"]
    rsync = ["rsync", "-a", "-e", f"ssh -F {ssh_config} -o BatchMode=yes", f"{tree}/",
             f"testbed:{remote}/plain/"]
    try:
        subprocess.run([*ssh, f"mkdir -p {remote}/plain"], check=True)
        first = time_command(push, env=env)
        subprocess.run(rsync, check=True)
        print(f"tree: {args.files} files, {args.mb} MB; first push {first:.1f} s")

        def baseline() -> float:
            return time_command([*ssh, "true"]) + time_command(rsync)

        b, c, ratio = compare(baseline, lambda: time_command(push, env=env),
                              repeats=args.repeats, warmup=1)
        report("no-op hpcnn push", "ssh host true + no-op rsync -a", b, c, ratio,
               goal="<= 1.3x")
        noop = wire_bytes(counts, push, env_counted)
        rsync_counted = [*rsync[:3], f"ssh -F {counted} -o BatchMode=yes", *rsync[4:]]
        noop_rsync = wire_bytes(counts, rsync_counted, env_counted)
        print(f"  bytes on the wire, no-op: hpcnn push {noop}, rsync {noop_rsync} "
              f"(protocol and file lists; 0 file bytes)")
        before = logins(log)
        subprocess.run(push, check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"  sshd logins per push: {logins(log) - before}")
        case = [p for p in cases if p.name.startswith("case_003_")]
        case_bytes = sum(p.stat().st_size for p in case)
        for p in case:
            p.write_bytes(os.urandom(p.stat().st_size))
        moved = wire_bytes(counts, push, env_counted)
        print(f"re-push after one case changed ({len(case)} files, {case_bytes / 1e6:.1f} MB): "
              f"{moved / 1e6:.1f} MB on the wire -> {moved / case_bytes:.2f}x that case "
              "(goal <= 1.1x)")
        sftp_push(work, tree, ssh_config, env, ssh, remote, args.repeats)
    finally:
        subprocess.run([*ssh, f"rm -rf {remote}"], check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
