"""Scheduler answers that are only half true (issue 8), every entry of every dialect's state
table and every exit-code rule, each from a fixture line (tests/fixtures/*/SOURCES.md or
MANIFEST.md say where each format comes from)."""

from __future__ import annotations

import pytest
from captures import load, parse, summary

from hpcnn.errors import SchedulerUnavailable
from hpcnn.jobs.engine import Markers, Observation, Verdict, decide
from hpcnn.schedulers import get_dialect
from hpcnn.schedulers.base import JobState
from hpcnn.schedulers.batch import hms_seconds, qstat_failure
from hpcnn.schedulers.pbspro import _documents, parse_qstat_json
from hpcnn.schedulers.slurm import exit_code

TORQUE, PBS, SLURM = get_dialect("torque"), get_dialect("pbspro"), get_dialect("slurm")


# --- 8: a call that failed as a whole is never trusted in part --------------------------------

@pytest.mark.parametrize(("dialect", "group", "name", "ids"), [
    (TORQUE, "torque", "qstat_f_partial_down", ["4242.headnode.example.org", "4243"]),
    (PBS, "pbspro", "qstat_json_partial_down", ["1001.pbs01", "1002.pbs01"]),
])
def test_a_failed_call_with_a_partial_answer_is_no_answer(dialect, group, name, ids) -> None:
    cap = load(group, name)
    assert cap.rc == 255 and cap.stdout.strip()  # part of an answer, then the failure
    with pytest.raises(SchedulerUnavailable, match="cannot connect to server"):
        dialect.parse_status(cap.stdout, cap.stderr, cap.rc, ids)


@pytest.mark.parametrize(("dialect", "group", "name", "job_id", "running"), [
    (TORQUE, "torque", "qstat_f_cut", "4248.headnode.example.org", "4242.headnode.example.org"),
    (PBS, "pbspro", "qstat_json_cut", "1006.pbs01", "1001.pbs01"),
])
def test_a_record_cut_mid_line_is_never_finished(dialect, group, name, job_id, running) -> None:
    """The walltime kill's ``-11``/``-29`` arrives as ``-1``/``-2``: not ``failed -1``."""
    jobs = parse(dialect, group, name, [running, job_id])
    assert summary(jobs) == {running: ("running", None), job_id: ("unknown", None)}
    assert jobs[job_id].reason == "qstat's answer for this job was cut off"
    verdict = decide(Observation(jobs[job_id], Markers()), answered=True,
                     previous=JobState.RUNNING, first_missing_at=None, grace=30, now=0)
    assert (verdict.state, verdict.exit_code) == (JobState.UNKNOWN, None)


# --- 9: output nobody can read, exit 0, is no answer ------------------------------------------

@pytest.mark.parametrize(("dialect", "group", "name", "shown"), [
    (PBS, "pbspro", "qstat_text_answer", "Job Id: 1001.pbs01"),
    (PBS, "pbspro", "qstat_json_empty", "no output"),
    (TORQUE, "torque", "qstat_f_empty", "no output"),
    (TORQUE, "pbspro", "qstat_json_loop", "{"),
])
def test_an_answer_nobody_can_read_is_unknown(dialect, group, name, shown) -> None:
    cap = load(group, name)
    with pytest.raises(SchedulerUnavailable, match=f"not {dialect.product}'s status format: "
                       + shown.replace("[", r"\[")):
        dialect.parse_status(cap.stdout, cap.stderr, 0, ["1001.pbs01"])


def test_an_unreadable_squeue_answer_is_unknown() -> None:
    with pytest.raises(SchedulerUnavailable, match="squeue printed nothing hpcnn can read: "
                       "JOBID PARTITION"):
        parse(SLURM, "slurm", "squeue_foreign", ["26"])


def test_forgotten_ids_still_read_as_gone_not_unreadable() -> None:
    """What stays "left the queue": an exit 153 with nothing printed (every id unknown), and
    a PBS Pro document without ``Jobs``."""
    assert TORQUE.parse_status("", "", 153, ["1"]) == {}
    assert parse(PBS, "pbspro", "qstat_json_no_jobs", ["1009.pbs01"]) == {}
    assert TORQUE.parse_status("", "qstat: Unknown Job Id 1.h\n", 153, ["1.h"]) == {}


# --- 10: held, memory kills, requeues, hpcnn's own cancel, days --------------------------------

def test_every_slurm_state_from_a_fixture_line() -> None:
    jobs = parse(SLURM, "slurm", "squeue_every_state", [str(n) for n in range(40, 71)])
    assert summary(jobs) == {
        "40": ("queued", None), "41": ("held", None), "42": ("held", None),
        "43": ("held", None), "44": ("held", None), "45": ("queued", None),
        "46": ("queued", None), "47": ("queued", None), "48": ("held", None),
        "49": ("held", None), "50": ("running", None), "51": ("running", None),
        "52": ("running", None), "53": ("running", None), "54": ("running", None),
        "55": ("running", None), "56": ("running", None), "57": ("completed", 0),
        "58": ("failed", 1), "59": ("failed", 137),
        # after the blank line: still read
        "60": ("failed", 0), "61": ("failed", 0), "62": ("failed", 0), "63": ("failed", 143),
        "64": ("held", None),  # SPECIAL_EXIT: requeued held, it may run again
        "65": ("timeout", 143), "66": ("cancelled", None), "67": ("cancelled", 143),
        "68": ("cancelled", 143), "69": ("unknown", None), "70": ("completed", None),
    }
    assert (jobs["59"].raw_state, jobs["59"].reason) == ("OUT_OF_MEMORY", "OutOfMemory")
    assert (jobs["40"].reason, jobs["57"].reason) == ("Priority", None)


def test_every_torque_state_and_exit_rule_from_a_fixture_line() -> None:
    ids = [f"{n}.headnode.example.org" for n in range(4251, 4263)]
    jobs = {k.split(".")[0]: v for k, v in parse(TORQUE, "torque", "qstat_f_more_states",
                                                 ids).items()}
    assert summary(jobs) == {
        "4251": ("queued", None), "4252": ("queued", None), "4253": ("running", None),
        "4254": ("failed", -10), "4255": ("completed", 0), "4256": ("failed", 257),
        "4257": ("failed", 256), "4259": ("unknown", None), "4260": ("failed", 271),
        "4261": ("timeout", 271), "4262": ("timeout", 3),
    }  # 4258: C without exit_status is left to its exit marker
    reasons = {k: v.reason for k, v in jobs.items()}
    assert reasons["4254"] == ("killed by the batch system: JOB_EXEC_OVERLIMIT_MEM, over its "
                               "memory limit (exit -10)")
    assert reasons["4256"] == "killed by signal 1"
    assert reasons["4257"] is None and reasons["4255"] is None
    assert reasons["4260"] == "killed by signal 15"  # one second short of 29 hours
    assert reasons["4261"] == reasons["4262"] == "walltime exceeded"
    assert (jobs["4259"].raw_state, jobs["4253"].raw_state) == ("Z", "S")


def test_every_pbspro_state_and_exit_rule_from_a_fixture_line() -> None:
    ids = [f"{n}.pbs01" for n in range(1021, 1034) if n != 1024] + ["1024[].pbs01"]
    jobs = parse(PBS, "pbspro", "qstat_json_more_states", ids)
    assert summary(jobs) == {
        "1021.pbs01": ("queued", None), "1022.pbs01": ("queued", None),
        "1023.pbs01": ("queued", None), "1024[].pbs01": ("running", None),
        "1025.pbs01": ("running", None), "1026.pbs01": ("running", None),
        "1027.pbs01": ("failed", -27), "1028.pbs01": ("failed", -26),
        "1029.pbs01": ("failed", 265), "1030.pbs01": ("completed", 0),
        "1031.pbs01": ("timeout", 3), "1033.pbs01": ("unknown", None),
    }
    assert jobs["1027.pbs01"].reason == (
        "killed by the batch system: JOB_EXEC_KILL_MEM, over its memory limit (exit -27); "
        "Job run at Mon Mar 04 at 09:12 on (gpu07:ncpus=4:mem=67108864kb) and failed")
    assert jobs["1028.pbs01"].reason == ("killed by the batch system: JOB_EXEC_KILL_VMEM, over "
                                         "its virtual memory limit (exit -26)")
    assert jobs["1029.pbs01"].reason == "killed by signal 9"


@pytest.mark.parametrize(("dialect", "group", "name", "job_id", "word"), [
    (SLURM, "slurm", "squeue_every_state", "59", "OUT_OF_MEMORY (OutOfMemory)"),
    (PBS, "pbspro", "qstat_json_more_states", "1027.pbs01", "F (killed by the batch system: "
     "JOB_EXEC_KILL_MEM"),
    (TORQUE, "torque", "qstat_f_more_states", "4254.headnode.example.org",
     "C (killed by the batch system: JOB_EXEC_OVERLIMIT_MEM"),
])
def test_a_memory_kill_beside_exit_0_is_a_warning(dialect, group, name, job_id, word) -> None:
    sched = parse(dialect, group, name, [job_id])[job_id]
    ended = Markers(started={"time": "2026-03-04T09:00:00Z"}, exit_code=0,
                    exit_info={"phase": "run", "signal": "", "time": "2026-03-04T10:00:00Z"})
    verdict = decide(Observation(sched, ended), answered=True, previous=JobState.RUNNING,
                     first_missing_at=None, grace=30, now=0)
    assert (verdict.state, verdict.exit_code) == (JobState.COMPLETED, 0)
    assert verdict.detail.startswith(f"warning: the scheduler says {word}")


def test_a_requeued_job_does_not_show_its_previous_start() -> None:
    """Slurm requeued the job after a node failure: squeue says REQUEUED/PENDING while the
    folder still holds the first start's ``exit_code`` 143."""
    sched = parse(SLURM, "slurm", "squeue_every_state", ["46"])["46"]
    old = Markers(started={"time": "2026-03-04T09:00:00Z", "jobid": "46"}, exit_code=143,
                  exit_info={"signal": "TERM", "time": "2026-03-04T09:30:00Z"})
    verdict = decide(Observation(sched, old), answered=True, previous=JobState.RUNNING,
                     first_missing_at=None, grace=30, now=0)
    assert verdict == Verdict(JobState.QUEUED, None, "", None)


@pytest.mark.parametrize(("dialect", "group", "name", "job_id"), [
    (TORQUE, "torque", "qstat_f_states", "4250.headnode.example.org"),  # C 271 after qdel
    (PBS, "pbspro", "qstat_json_more_states", "1029.pbs01"),  # F 265
])
def test_a_job_hpcnn_cancelled_stays_cancelled(dialect, group, name, job_id) -> None:
    sched = parse(dialect, group, name, [job_id])[job_id]
    signalled = Markers(started={"time": "2026-03-04T09:00:00Z", "walltime": "18000"},
                        exit_code=143, exit_info={"signal": "TERM", "phase": "run",
                                                  "time": "2026-03-04T09:20:00Z"})
    for markers in (signalled, Markers()):
        verdict = decide(Observation(sched, markers), answered=True,
                         previous=JobState.CANCELLED, first_missing_at=None, grace=30, now=0)
        assert verdict.state == JobState.CANCELLED
    gone = decide(Observation(None, Markers()), answered=True, previous=JobState.CANCELLED,
                  first_missing_at=0, grace=30, now=100)
    assert gone.state == JobState.CANCELLED


@pytest.mark.parametrize(("text", "seconds"), [
    ("1:05:00:00", 86400 + 5 * 3600), ("05:00:00", 18000), ("90:00", 5400), ("42", 42),
    ("29:00:00", 104400), (" 01:00:01 ", 3601), ("0:0:0:1", 1),
])
def test_hms_seconds_days_first(text: str, seconds: int) -> None:
    assert hms_seconds(text) == seconds


@pytest.mark.parametrize("text", [None, "", "5h", "1:2:3:4:5", "01:00:xx", "-1:00"])
def test_hms_seconds_unreadable(text: str | None) -> None:
    assert hms_seconds(text) is None


# --- 11: the rules under the tables ----------------------------------------------------------

@pytest.mark.parametrize(("stderr", "rc", "failure"), [
    ("", 0, None),
    ("qstat: cannot connect to server x\n", 0, None),  # exit 0: it answered
    ("qstat: Unknown Job Id 1.h\n", 153, None),
    ("qstat: 1.h Job has finished, use -x or -H\n", 35, None),
    ("", 153, None),  # Slurm's wrapper: every id unknown, nothing said
    ("", 1, "qstat exited 1 without a message"),
    ("qstat: Unknown Job Id 1.h\n\nqstat: cannot connect to server x\n", 255,
     "qstat: cannot connect to server x"),
])
def test_qstat_failure(stderr: str, rc: int, failure: str | None) -> None:
    assert qstat_failure(stderr, rc) == failure


@pytest.mark.parametrize(("field", "code"), [
    ("0", 0), ("768", 3), ("15", 143), ("9", 137), ("25344", 99), ("3:0", 3), ("0:15", 143),
    (" 256 ", 1), ("", None), ("N/A", None), ("-1", None), ("32768", 128), ("1:", None),
])
def test_slurm_exit_code(field: str, code: int | None) -> None:
    assert exit_code(field) == code


def test_slurm_failure_and_unknown_ids() -> None:
    assert parse(SLURM, "slurm", "squeue_unknown_only", ["999999"]) == {}
    with pytest.raises(SchedulerUnavailable, match=r"squeue failed \(exit 1\): slurm down"):
        SLURM.parse_status("", "slurm down\n", 1, ["1"])
    with pytest.raises(SchedulerUnavailable, match=r"\(exit 2\): partial"):
        SLURM.parse_status("partial\n", "", 2, ["1"])
    with pytest.raises(SchedulerUnavailable, match=r"\(exit 3\): no message"):
        SLURM.parse_status("", "", 3, ["1"])
    assert SLURM.parse_status("", "", 0, ["1"]) == {}


def test_ids_answered_in_another_spelling_are_keyed_as_asked() -> None:
    text = load("torque", "qstat_f_states").stdout
    assert set(TORQUE.parse_status(text, "", 0, ["4242", "4243.headnode"])) >= {"4242",
                                                                                "4243.headnode"}


# --- the PBS Pro JSON parser on its own, the salvage path off ----------------------------------

def test_pbspro_json_parser_without_salvage() -> None:
    text = load("pbspro", "qstat_json_loop").stdout
    jobs = parse_qstat_json(text, salvage=False)
    assert sorted(jobs) == ["1001.pbs01", "1002.pbs01", "1003.pbs01", "1004.pbs01",
                            "1005.pbs01", "1006.pbs01", "1007.pbs01", "1008[1].pbs01"]
    assert jobs["1006.pbs01"]["Exit_status"] == -29
    assert jobs["1006.pbs01"]["resources_used"]["walltime"] == "05:00:04"
    assert jobs["1001.pbs01"]["Variable_List"]["PBS_O_QUEUE"] == "gpu"
    assert parse_qstat_json(text) == jobs  # valid JSON never goes through the salvage
    broken = load("pbspro", "qstat_json_bash_func").stdout
    assert parse_qstat_json(broken, salvage=False) == {}
    assert parse_qstat_json(broken)["1011.pbs01"]["job_state"] == "F"


def test_pbspro_documents_by_depth_outside_strings() -> None:
    text = ('noise {"a": "x}{\\"y", "b": {"c": 1}}\n{"d": [1, {"e": "\\\\"}]} tail '
            '{"f": "open')
    assert list(_documents(text)) == [
        ('{"a": "x}{\\"y", "b": {"c": 1}}', True),
        ('{"d": [1, {"e": "\\\\"}]}', True),
        ('{"f": "open', False),
    ]
    assert list(_documents("} no document {}")) == [("{}", True)]
    assert list(_documents('{"a": {"b": 1}')) == [('{"a": {"b": 1}', False)]


def test_pbspro_json_documents_that_are_not_qstat_answers_are_ignored() -> None:
    assert parse_qstat_json('[1, 2] {"other": 1} {"Jobs": [1]} {"Jobs": {"1.x": 5}}') == {}
    assert PBS.readable('{"pbs_version": "20.0.1"}')
    assert PBS.readable('{"Jobs": {}}')
    assert not PBS.readable('[1, 2] {"other": 1}')
    assert not PBS.readable('{"broken": "no job here')
