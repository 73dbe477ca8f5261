"""Torque dialect over documented Torque outputs and the test bed's real wrapper outputs."""

from __future__ import annotations

import pytest
from captures import load, parse, summary

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.schedulers import Dependency, JobState, get_dialect

TORQUE = get_dialect("torque")


def test_submit_argv_with_dependencies_and_never_dash_v() -> None:
    assert TORQUE.submit_command("job.sh") == ["qsub", "job.sh"]
    deps = [Dependency("11.h"), Dependency("12.h"), Dependency("13.h", "afterany")]
    argv = TORQUE.submit_command("job.sh", dependencies=deps)
    assert argv == ["qsub", "-W", "depend=afterok:11.h:12.h,afterany:13.h", "job.sh"]
    assert "-V" not in argv


@pytest.mark.parametrize(("group", "name", "job_id"), [
    ("torque", "qsub_ok", "4242.headnode.example.org"),
    ("captured", "torque_qsub", None),  # the wrapper prints the bare number
    ("pbspro", "qsub_array", "1008[].pbs01"),
])
def test_parse_submit(group: str, name: str, job_id: str | None) -> None:
    out = load(group, name).stdout
    assert TORQUE.parse_submit(out) == (job_id or out.strip())


def test_parse_submit_without_an_id_shows_what_qsub_said() -> None:
    cap = load("captured", "torque_qsub_reject_gpus3")
    with pytest.raises(SchedulerError, match="Requested node configuration is not available"):
        TORQUE.parse_submit(cap.stdout)
    with pytest.raises(SchedulerError, match="no output"):
        TORQUE.parse_submit(load("torque", "qsub_empty").stdout)


def test_one_status_call_for_every_state() -> None:
    ids = [str(n) for n in range(4242, 4251)]
    jobs = parse(TORQUE, "torque", "qstat_f_states", ids)
    assert summary(jobs) == {
        "4242": ("running", None),
        "4243": ("queued", None),
        "4244": ("held", None),
        "4245": ("running", None),  # E = exiting, not an error
        "4246": ("completed", 0),
        "4247": ("failed", 3),
        "4248": ("timeout", -11),  # JOB_EXEC_KILL_WALLTIME
        "4249": ("timeout", 271),  # SIGTERM after using the whole walltime
        "4250": ("failed", 271),  # SIGTERM early: qdel, not the walltime
    }
    assert jobs["4250"].reason == "killed by signal 15"
    assert TORQUE.status_command(ids[:2]) == ["qstat", "-f", "4242", "4243"]


def test_documented_failure_with_continuation_lines() -> None:
    from hpcnn.schedulers.torque import parse_qstat_full

    text = load("torque", "qstat_f_exit_status_doc").stdout
    attrs = parse_qstat_full(text)["179.host"]
    assert attrs["Variable_List"].endswith("PBS_O_WORKDIR=/opt/moab,PBS_O_QUEUE=batchq")
    assert "Bad UID for job execution" in attrs["sched_hint"]
    job = TORQUE.parse_status(text, "", 0, ["179.host"])["179.host"]
    assert (job.state, job.exit_code) == (JobState.FAILED, -1)
    assert "own exit code" in (job.reason or "")


def test_forgotten_ids_are_left_out_not_an_error() -> None:
    assert summary(parse(TORQUE, "torque", "qstat_f_unknown_mixed", ["4200", "4243"])) == {
        "4243": ("queued", None)}
    assert parse(TORQUE, "torque", "qstat_f_unknown_only", ["4200"]) == {}


@pytest.mark.parametrize(("group", "name", "text"), [
    ("torque", "qstat_server_down", "cannot connect to server"),
    ("torque", "qstat_not_installed", "command not found"),
    ("captured", "torque_qstat_no_such_option", "Unknown option"),
])
def test_a_failed_call_is_unavailable_never_failed(group: str, name: str, text: str) -> None:
    with pytest.raises(SchedulerUnavailable, match=text):
        parse(TORQUE, group, name, ["1"])


def test_wrapper_outputs_from_the_test_bed() -> None:
    """Slurm's wrapper: TAB-indented keys, ``C`` for every end without an exit status (the
    job's own exit marker decides), held and dependent jobs shown as ``Q``."""
    mix = parse(TORQUE, "captured", "torque_qstat_f_mix", ["11", "12", "14", "16", "17", "18"])
    assert summary(mix) == {"14": ("running", None), "16": ("queued", None),
                            "17": ("queued", None), "18": ("queued", None)}
    assert parse(TORQUE, "captured", "torque_qstat_f_final", ["11", "999999"]) == {}
    assert parse(TORQUE, "captured", "torque_qstat_f_unknown_only", ["999999"]) == {}
    assert parse(TORQUE, "captured", "torque_qstat_f_dep_never", ["17"])["17"].state == "queued"


def test_job_names_fit_fifteen_characters_and_stay_distinct() -> None:
    names = {TORQUE.job_name(f"hpcnn-501-nnUNetTrainer-3d_fullres-f{f}-a1") for f in range(5)}
    assert len(names) == 5
    assert all(len(n) <= 15 and n[0].isalpha() for n in names)
    assert TORQUE.job_name("short") == "short"


def test_cancel() -> None:
    assert TORQUE.cancel_command(["1.h", "2.h"]) == ["qdel", "1.h", "2.h"]
