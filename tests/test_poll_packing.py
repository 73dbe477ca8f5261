"""A poll's output travels packed (gzip + base64) when the cluster can pack it: a 100-job
``qstat -f`` is 65 kB of repeated attribute names (bench/status_cli.py measures the poll)."""

from __future__ import annotations

import subprocess

from hpcnn.jobs.engine import poll_with
from hpcnn.remote.base import PACKED, Result, packed_line, unpacked
from hpcnn.remote.local import LocalConnection
from hpcnn.schedulers import get_dialect

QSTAT_LIKE = "for i in $(seq 1 800); do echo \"    Resource_List.walltime = 01:00:00 $i\"; done"


class NetworkLike(LocalConnection):
    """This machine's shell as a cluster's would be: output packed, its size on the wire kept."""

    packs_output = True

    def __init__(self) -> None:
        self.wire: list[int] = []

    def _run(self, line: str, *, stdin: str | None, timeout: float | None) -> Result:
        result = super()._run(line, stdin=stdin, timeout=timeout)
        self.wire.append(len(result.stdout))
        return result


def test_poll_output_travels_packed_and_reads_back_whole() -> None:
    expected = subprocess.run(["bash", "-c", QSTAT_LIKE], capture_output=True, text=True,
                              check=True).stdout
    conn = NetworkLike()
    _, _, extras = poll_with(conn, get_dialect("slurm"), [], extra=[QSTAT_LIKE, "echo second"])
    assert extras[0].strip() == expected.strip()
    assert extras[1].strip() == "second"
    assert conn.wire[0] < len(expected) / 5, conn.wire


def test_cluster_without_gzip_answers_unpacked() -> None:
    out = subprocess.run(["/bin/bash", "-c", packed_line("echo plain; echo text")],
                         env={"PATH": "/nonexistent"}, capture_output=True, text=True,
                         check=True).stdout
    assert not out.startswith(PACKED)
    assert unpacked(out) == "plain\ntext\n"


def test_packed_output_cut_short_reads_as_nothing() -> None:
    whole = subprocess.run(["bash", "-c", packed_line(QSTAT_LIKE)], capture_output=True,
                           text=True, check=True).stdout
    assert whole.startswith(PACKED + "\n")
    assert unpacked(whole).count("Resource_List") == 800
    assert unpacked(whole[: len(whole) // 2]) == ""
