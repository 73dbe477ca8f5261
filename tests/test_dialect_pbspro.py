"""PBS Pro dialect over documented and published ``qstat -f -F json -x`` outputs."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from captures import load, parse, summary

from hpcnn.errors import SchedulerUnavailable
from hpcnn.schedulers import Dependency, get_dialect

PBS = get_dialect("pbspro")


def test_submit_and_cancel_argv() -> None:
    argv = PBS.submit_command("job.sh", dependencies=[Dependency("1001.pbs01")])
    assert argv == ["qsub", "-W", "depend=afterok:1001.pbs01", "job.sh"]
    assert PBS.parse_submit(load("pbspro", "qsub_ok").stdout) == "1001.pbs01"
    assert PBS.cancel_command(["1001.pbs01"]) == ["qdel", "1001.pbs01"]


def test_status_line_asks_each_id_with_x_in_one_call(tmp_path) -> None:
    """One shell line, one ``qstat -f -F json -x`` per id, the worst exit status kept; run
    here against a stand-in qstat to prove the quoting and the loop."""
    fake = tmp_path / "qstat"
    fake.write_text('#!/bin/sh\necho "$*"\n[ "$5" = bad ] && exit 153\nexit 0\n')
    fake.chmod(0o755)
    argv = PBS.status_command(["1001.pbs01", "bad", "x y$(id)"])
    res = subprocess.run(["bash", "-c", shlex.join(argv)], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=False)
    assert res.stdout.splitlines() == ["-f -F json -x 1001.pbs01", "-f -F json -x bad",
                                       "-f -F json -x x y$(id)"]
    assert res.returncode == 153


def test_every_state_in_one_answer() -> None:
    ids = [f"{n}.pbs01" for n in range(1001, 1008)] + ["1008[1].pbs01", "1009.pbs01"]
    jobs = parse(PBS, "pbspro", "qstat_json_loop", ids)
    assert summary(jobs) == {
        "1001.pbs01": ("running", None),
        "1002.pbs01": ("queued", None),
        "1003.pbs01": ("held", None),
        "1004.pbs01": ("completed", 0),
        "1005.pbs01": ("failed", 3),
        "1006.pbs01": ("timeout", -29),  # JOB_EXEC_KILL_WALLTIME
        "1007.pbs01": ("running", None),  # E = exiting
        "1008[1].pbs01": ("completed", 0),  # X: a finished subjob
    }
    assert "Insufficient amount of resource" in (jobs["1002.pbs01"].reason or "")


def test_no_jobs_key_and_finished_without_exit_status() -> None:
    assert parse(PBS, "pbspro", "qstat_json_no_jobs", ["1009.pbs01"]) == {}
    # no Exit_status: how it ended is unknown, so the job's own marker decides
    assert parse(PBS, "pbspro", "qstat_json_finished_no_exit", ["1010.pbs01"]) == {}


@pytest.mark.parametrize(("name", "job_id", "expected"), [
    ("qstat_json_bash_func", "1011.pbs01", ("completed", 0)),
    ("qstat_json_numeric_env", "1012.pbs01", ("running", None)),
])
def test_invalid_json_is_read_tolerantly(name: str, job_id: str, expected: tuple) -> None:
    assert summary(parse(PBS, "pbspro", name, [job_id])) == {job_id: expected}


def test_finished_job_without_x_is_not_a_scheduler_failure() -> None:
    assert parse(PBS, "pbspro", "qstat_finished_without_x", ["1004.pbs01"]) == {}


def test_server_down_is_unavailable() -> None:
    with pytest.raises(SchedulerUnavailable, match="cannot connect to server pbs01"):
        parse(PBS, "pbspro", "qstat_server_down", ["1001.pbs01"])


def test_job_names_keep_up_to_230_characters() -> None:
    assert len(PBS.job_name("j" * 300)) == 230
    assert PBS.job_name("hpcnn-501-f0-a1") == "hpcnn-501-f0-a1"
