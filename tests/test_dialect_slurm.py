"""Slurm dialect over the test bed's real outputs (tests/fixtures/slurm: the dialect's own
squeue call; tests/fixtures/captured: the test-bed capture's submit and squeue outputs)."""

from __future__ import annotations

import pytest
from captures import load, parse, summary

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.schedulers import Dependency, get_dialect
from hpcnn.schedulers.slurm import exit_code

SLURM = get_dialect("slurm")
# roles of tests/fixtures/slurm (MANIFEST.md)
OK, FAIL, TIMEOUT, HELD, DEP, CANCELLED, UNKNOWN = "26", "27", "28", "29", "30", "31", "999999"


def test_submit_argv() -> None:
    assert SLURM.submit_command("job.sh") == ["sbatch", "--parsable", "job.sh"]
    deps = [Dependency("5"), Dependency("6"), Dependency("7", "afterany")]
    assert SLURM.submit_command("job.sh", dependencies=deps) == [
        "sbatch", "--parsable", "--dependency=afterok:5:6,afterany:7", "job.sh"]


@pytest.mark.parametrize(("stdout", "job_id"), [
    (load("captured", "slurm_sbatch_parsable").stdout, load("captured",
                                                            "slurm_sbatch_parsable").stdout.strip()),
    ("123;cluster2\n", "123"),
    ("Submitted batch job 77\n", "77"),
    ("sbatch: warning: something\n88\n", "88"),
])
def test_parse_submit(stdout: str, job_id: str) -> None:
    assert SLURM.parse_submit(stdout) == job_id


def test_rejected_submission_has_no_id() -> None:
    cap = load("captured", "slurm_sbatch_reject_gpus3")
    assert cap.rc == 1 and "Requested node configuration is not available" in cap.stderr
    with pytest.raises(SchedulerError, match="no output"):
        SLURM.parse_submit(cap.stdout)


def test_status_argv_is_one_squeue_with_exit_codes() -> None:
    argv = SLURM.status_command(["1", "2"])
    assert argv[:6] == ["squeue", "-h", "-t", "all", "-j", "1,2"]
    assert "exit_code" in argv[-1]


def test_active_jobs() -> None:
    ids = [OK, FAIL, TIMEOUT, HELD, DEP, CANCELLED, UNKNOWN]
    jobs = parse(SLURM, "slurm", "squeue_active", ids)
    assert summary(jobs) == {
        OK: ("completed", 0), FAIL: ("failed", 3), TIMEOUT: ("running", None),
        HELD: ("held", None),  # JobHeldUser
        DEP: ("held", None),  # waiting on a dependency
        CANCELLED: ("queued", None),  # BeginTime: queued, not held
    }
    assert jobs[DEP].reason == "Dependency"
    assert jobs[OK].reason is None


def test_finished_jobs_with_real_exit_codes() -> None:
    jobs = parse(SLURM, "slurm", "squeue_final", [OK, FAIL, TIMEOUT, HELD, DEP, CANCELLED])
    assert summary(jobs) == {
        OK: ("completed", 0), FAIL: ("failed", 3),
        TIMEOUT: ("timeout", 99),  # its TERM trap exited 99
        HELD: ("cancelled", None), CANCELLED: ("cancelled", None),
        DEP: ("held", None),  # DependencyNeverSatisfied: still waiting, shown as held
    }


def test_test_bed_capture_in_the_short_format() -> None:
    """tests/testbed/capture.sh's ``%i|%T|%r|%j`` lines: states and reasons still map."""
    final = summary(parse(SLURM, "captured", "slurm_squeue_final", ["13", "16", "17", "9", "10"]))
    assert final["13"][0] == "timeout" and final["16"][0] == "cancelled"
    assert final["9"][0] == "completed" and final["10"][0] == "failed"
    active = summary(parse(SLURM, "captured", "slurm_squeue_active", ["15", "16", "18", "14"]))
    assert [active[i][0] for i in ("15", "16", "18", "14")] == ["held", "queued", "held",
                                                                "running"]


def test_unknown_ids_only_is_not_a_failure() -> None:
    assert parse(SLURM, "slurm", "squeue_unknown_only", [UNKNOWN]) == {}
    assert parse(SLURM, "captured", "slurm_squeue_unknown_only", [UNKNOWN]) == {}


@pytest.mark.parametrize(("stderr", "rc"), [
    ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", 1),
    ("bash: line 1: squeue: command not found\n", 127),
])
def test_failed_call_is_unavailable(stderr: str, rc: int) -> None:
    with pytest.raises(SchedulerUnavailable, match=stderr.split(":")[-1].strip()[:20]):
        SLURM.parse_status("", stderr, rc, ["1"])


@pytest.mark.parametrize(("field", "code"), [
    ("0", 0), ("768", 3), ("25344", 99), ("15", 143), ("3:0", 3), ("0:15", 143), ("", None),
])
def test_exit_code_decoding(field: str, code: int | None) -> None:
    assert exit_code(field) == code


def test_cancel() -> None:
    assert SLURM.cancel_command(["1", "2"]) == ["scancel", "1", "2"]
