"""The corners of the dialects' parsers and of the poll's marker reading that the mutation run
(bench/mutation.py) found untested: ids as asked, odd lines around qstat records, values with
separators inside, broken JSON with several jobs, exact messages. Inline texts are in the
layout of the fixtures next to them (tests/fixtures/*/SOURCES.md, MANIFEST.md)."""

from __future__ import annotations

import pytest
from captures import load

from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.jobs.engine import Markers, _parse_markers
from hpcnn.schedulers import get_dialect
from hpcnn.schedulers.pbspro import _documents, parse_qstat_json

TORQUE, PBS, SLURM = get_dialect("torque"), get_dialect("pbspro"), get_dialect("slurm")


def keyed_as_reported(jobs: dict) -> None:
    assert all(job.job_id == key for key, job in jobs.items())


# --- PBS family ---------------------------------------------------------------------------------

def test_ids_are_keyed_as_asked_or_as_reported() -> None:
    text = load("torque", "qstat_f_states").stdout
    jobs = TORQUE.parse_status(text, "", 0, ["4242", "4243.headnode.cluster", "4246",
                                             "4248.headnode.example.org"])
    keyed_as_reported(jobs)
    assert {"4242", "4243.headnode.cluster", "4246", "4248.headnode.example.org",
            "4244.headnode.example.org"} <= set(jobs)  # 4244: not asked, kept as printed
    assert jobs["4243.headnode.cluster"].raw_state == "Q"
    cut = TORQUE.parse_status(load("torque", "qstat_f_cut").stdout, "", 0, ["4248"])
    keyed_as_reported(cut)
    assert (cut["4248"].state.value, cut["4248"].raw_state) == ("unknown", "C")


def test_odd_lines_around_and_inside_qstat_records() -> None:
    text = ("Welcome to the cluster\n"  # a login banner before the first record
            "\n"
            "Job Id: 7.h\n"
            "\tbroken continuation before any key\n"
            "    job_state = R\n"
            "    comment = waiting on gpu07   \n"
            "Xjunk not indented\n"
            "junk not indented\n"
            "    Variable_List = A=1,\n"
            "\tB=2\n"
            "\n"
            "Job Id: 8.h\n"
            "    queue = gpu\n"
            "\n")
    jobs = TORQUE.parse_status(text, "", 0, ["7.h", "8.h"])
    assert (jobs["7.h"].state.value, jobs["7.h"].reason) == ("running", "waiting on gpu07")
    assert (jobs["8.h"].state.value, jobs["8.h"].raw_state, jobs["8.h"].reason) == (
        "unknown", None, None)
    from hpcnn.schedulers.torque import parse_qstat_full

    assert parse_qstat_full(text)["7.h"] == {"job_state": "R", "comment": "waiting on gpu07",
                                             "Variable_List": "A=1,B=2"}


def test_qstat_failure_keeps_every_line_and_long_answers_are_cut_for_the_message() -> None:
    with pytest.raises(SchedulerUnavailable) as info:
        TORQUE.parse_status("", "qstat: a\nqstat: Unknown Job Id 1.h\nqstat: b\n", 255, ["1"])
    assert str(info.value) == "qstat failed (exit 255): qstat: a\nqstat: b"
    with pytest.raises(SchedulerUnavailable) as info:
        PBS.parse_status("a" * 120 + "b" * 80 + "\nsecond line\n", "", 0, ["1"])
    assert str(info.value).endswith("status format: " + "a" * 120)


def test_submit_without_an_id_says_exactly_that() -> None:
    with pytest.raises(SchedulerError) as info:
        TORQUE.parse_submit("\n")
    assert str(info.value) == "qsub did not print a job id: (no output)"
    with pytest.raises(SchedulerError) as info:
        SLURM.parse_submit("")
    assert str(info.value) == "sbatch did not print a job id: (no output)"


def test_pbspro_empty_values_and_missing_state() -> None:
    doc = ('{"pbs_version": "20.0.1", "Jobs": {"1.p": {"job_state": "Q", "comment": ""},'
           ' "2.p": {"queue": "gpu"}}}')
    jobs = PBS.parse_status(doc, "", 0, ["1.p", "2.p"])
    keyed_as_reported(jobs)
    assert (jobs["1.p"].state.value, jobs["1.p"].reason) == ("queued", None)
    assert (jobs["2.p"].state.value, jobs["2.p"].raw_state) == ("unknown", None)


def test_pbspro_salvage_reads_each_job_of_a_broken_document() -> None:
    """Three jobs in one document that ``json`` cannot read (an unescaped BASH_FUNC value, as
    in qstat_json_bash_func): each job's attributes come from its own part of the text."""
    broken = ('{"pbs_version": "20.0.1", "Jobs": {\n'
              '"1.p": {"job_state": "R",\n'
              '  "Variable_List": {"BASH_FUNC_x%%": "() { echo "hi"\n}"}},\n'
              '"2.p": {"job_state": "X", "Exit_status": -29,\n'
              '  "resources_used": {"cput": "00:01:00", "walltime": "05:00:04"},\n'
              '  "Resource_List": {"ncpus": 4, "walltime": "05:00:00"}},\n'
              '"3.p": {"job_state": "F", "Exit_status": 0, "comment": "done"}}}\n')
    assert parse_qstat_json(broken, salvage=False) == {}
    assert parse_qstat_json(broken) == {
        "1.p": {"job_state": "R"},
        "2.p": {"job_state": "X", "Exit_status": "-29",
                "resources_used": {"walltime": "05:00:04"},
                "Resource_List": {"walltime": "05:00:00"}},
        "3.p": {"job_state": "F", "Exit_status": "0", "comment": "done"},
    }


def test_pbspro_reads_on_after_a_broken_or_foreign_document() -> None:
    good = '{"pbs_version": "20.0.1", "Jobs": {"9.p": {"job_state": "R"}}}'
    assert list(parse_qstat_json('{"other": 1}\n' + good)) == ["9.p"]
    assert list(parse_qstat_json('{"Jobs": {"8.p": {"job_state": "Q", "x": 005}}}\n' + good)) \
        == ["8.p", "9.p"]
    assert list(parse_qstat_json('{"pbs_version": "1"} [1]\n' + good, salvage=False)) == ["9.p"]


def test_pbspro_json_with_raw_control_characters_and_first_empty_key() -> None:
    raw = '{"pbs_version": "20.0.1", "Jobs": {"5.p": {"job_state": "R", "comment": "a\tb\nc"}}}'
    assert parse_qstat_json(raw, salvage=False)["5.p"]["comment"] == "a\tb\nc"
    assert list(_documents('{"": "}"} {"a": 1}')) == [('{"": "}"}', True), ('{"a": 1}', True)]
    assert PBS.readable('{"other": 1}') is False


# --- Slurm --------------------------------------------------------------------------------------

def test_squeue_lines_without_an_id_or_state_and_names_with_the_separator() -> None:
    text = ("|RUNNING|None|0|no id\n"
            "5||None|0|no state\n"
            "6|RUNNING||0|empty reason\n"
            "7|PENDING|Priority|0|a|name|with|bars\n")
    jobs = SLURM.parse_status(text, "", 0, ["5", "6", "7"])
    keyed_as_reported(jobs)
    assert {k: (j.state.value, j.reason, j.raw_state) for k, j in jobs.items()} == {
        "5": ("unknown", None, ""), "6": ("running", None, "RUNNING"),
        "7": ("queued", "Priority", "PENDING")}


def test_squeue_argv_and_long_foreign_answers() -> None:
    assert SLURM.status_command(["1", "2"]) == [
        "squeue", "-h", "-t", "all", "-j", "1,2", "-O",
        "JobID:|,State:|,Reason:|,exit_code:|,Name:"]
    with pytest.raises(SchedulerUnavailable) as info:
        SLURM.parse_status("x" * 120 + "y" * 10 + "\n", "", 0, ["1"])
    assert str(info.value) == "squeue printed nothing hpcnn can read: " + "x" * 120


# --- the poll's marker blocks ------------------------------------------------------------------

SEP = "__HPCNN_{}__"


def test_marker_blocks_whose_logs_contain_the_separators() -> None:
    """err.log is the job's own text: a line that looks like hpcnn's separators must not move
    what is read as the markers."""
    block = (f"\n{SEP.format('JOB')} 0\nhost=n1\nnote=a=b\n{SEP.format('EXIT')}\n3\nphase=run\n"
             f"{SEP.format('ERR')}\nx\n{SEP.format('EXIT')}\n{SEP.format('ERR')}\nlast")
    stray = f"\n{SEP.format('JOB')} 2\nhost=stray\n\n{SEP.format('JOB')} 5\nhost=out\n"
    first, second = _parse_markers(stray + block + f"\n{SEP.format('JOB')} 1\nhost=n2\n", 2)
    assert first == Markers(started={"host": "n1", "note": "a=b"}, exit_code=3,
                            exit_info={"phase": "run"},
                            err_tail=f"x\n{SEP.format('EXIT')}\n{SEP.format('ERR')}\nlast")
    assert second.started == {"host": "n2"}
