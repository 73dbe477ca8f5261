"""Grid Engine: the sge dialect over outputs captured from the test bed's real Son of Grid Engine
(tests/fixtures/sge/MANIFEST.md), its header, its detection, and jobs through the real queue
as the second cluster account (sgeuser) on the test bed's sshd."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from captures import FIXTURES, load, parse, summary
from conftest import need
from runs_helper import fold_job

from hpcnn.config import Config, load_config_file
from hpcnn.errors import SchedulerError, SchedulerUnavailable
from hpcnn.jobs import engine
from hpcnn.jobs.model import JobSpec
from hpcnn.jobs.script import render_job
from hpcnn.remote import connect
from hpcnn.remote.base import Connection
from hpcnn.schedulers import Dependency, JobState, get_dialect
from hpcnn.schedulers.detect import detect_line, parse_detection
from hpcnn.workspace import RemoteLayout

SGE = get_dialect("sge")
REPO = Path(__file__).resolve().parents[1]


def submitted(name: str) -> str:
    """The id a captured qsub printed (``-terse``: the bare number)."""
    return SGE.parse_submit(load("sge", name).stdout)


# ---------------------------------------------------------------- submit and cancel


def test_submit_argv_holds_on_every_dependency_kind_and_never_dash_v() -> None:
    assert SGE.submit_command("job.sh") == ["qsub", "-terse", "job.sh"]
    deps = [Dependency("11"), Dependency("12", "afterany"), Dependency("13", "afternotok")]
    argv = SGE.submit_command("job.sh", dependencies=deps)
    assert argv == ["qsub", "-terse", "-hold_jid", "11,12,13", "job.sh"]
    assert "-V" not in argv
    assert SGE.cancel_command(["11", "12"]) == ["qdel", "11", "12"]


def test_parse_submit_terse_plain_and_array() -> None:
    terse = load("sge", "qsub_terse").stdout
    assert terse.strip().isdigit() and SGE.parse_submit(terse) == terse.strip()
    plain = load("sge", "qsub_plain").stdout  # Your job N ("s_fail") has been submitted
    assert SGE.parse_submit(plain) == plain.split()[2]
    array = load("sge", "qsub_array").stdout  # N.1-3:1
    assert SGE.parse_submit(array) == array.split(".")[0]


@pytest.mark.parametrize("name", ["qsub_reject_gpus3", "qsub_reject_pe3", "qsub_qmaster_down"])
def test_refused_submission_prints_no_id(name: str) -> None:
    cap = load("sge", name)
    assert cap.rc != 0 and "Unable to run job" in cap.stderr  # engine.submit shows stderr
    with pytest.raises(SchedulerError, match="no output"):
        SGE.parse_submit(cap.stdout)


# ---------------------------------------------------------------- status


def test_one_status_call_reads_every_captured_state() -> None:
    """Running (2 slots), error state with Grid Engine's reason, queued, user hold, -hold_jid,
    a held array; the finished and the unknown ids are left out for the markers to decide."""
    ids = {role: submitted(f"qsub_{name}") for role, name in [
        ("ok", "terse"), ("error", "error"), ("block", "block"), ("pending", "pending"),
        ("held", "held"), ("dep", "hold_jid"), ("array", "array")]}
    ids["fail"] = submitted("qsub_plain")
    jobs = parse(SGE, "sge", "status_mix", [*ids.values(), "999999"])
    by_role = {role: (jobs[i].state.value, jobs[i].raw_state) for role, i in ids.items()
               if i in jobs}
    assert by_role == {
        "error": ("held", "Eqw"),
        "block": ("running", "r"),
        "pending": ("queued", "qw"),
        "held": ("held", "hqw"),
        "dep": ("held", "hqw"),
        "array": ("held", "hqw"),
    }
    reason = jobs[ids["error"]].reason or ""
    assert "can't open output file \"/nonexistent/out\"" in reason and "qmod -cj" in reason
    assert not reason.startswith("12/")  # Grid Engine's timestamp prefix is dropped


def test_only_asked_ids_are_reported() -> None:
    block = submitted("qsub_block")
    assert summary(parse(SGE, "sge", "status_mix", [block])) == {block: ("running", None)}


def test_suspended_running_and_deleting_jobs() -> None:
    block, pending = submitted("qsub_block"), submitted("qsub_pending")
    suspended = parse(SGE, "sge", "status_suspended", [block, pending])
    assert (suspended[block].state, suspended[block].raw_state) == (JobState.RUNNING, "s")
    deleting = parse(SGE, "sge", "status_deleting", [block, pending])
    assert (deleting[block].state, deleting[block].raw_state) == (JobState.CANCELLED, "dr")
    assert deleting[pending].state == JobState.QUEUED
    assert parse(SGE, "sge", "status_empty", [block, pending]) == {}


# The letters one host cannot hold still (states_doc.xml, written in the captured format).
DOC_STATES = {
    "101": ("t", JobState.RUNNING), "102": ("Rr", JobState.RUNNING),
    "103": ("Rq", JobState.QUEUED), "104": ("hRwq", JobState.HELD),
    "105": ("S", JobState.RUNNING), "106": ("T", JobState.RUNNING),
    "107": ("dt", JobState.CANCELLED), "108": ("hr", JobState.RUNNING),
    "109": ("Ehqw", JobState.HELD), "110": ("w", JobState.QUEUED),
    "111": ("dRr", JobState.CANCELLED),
}


def test_documented_state_letters() -> None:
    text = (FIXTURES / "sge" / "states_doc.xml").read_text()
    jobs = SGE.parse_status(text, "", 0, list(DOC_STATES))
    assert {i: (j.raw_state, j.state) for i, j in jobs.items()} == DOC_STATES
    assert "no reason given" in (jobs["109"].reason or "")


@pytest.mark.parametrize(("name", "text"), [
    ("status_qmaster_down", "Connection refused"),
    ("status_other_qstat", "Unknown option: xml"),  # Slurm's Torque wrapper first on PATH
])
def test_a_failed_call_is_unavailable_not_forgotten(name: str, text: str) -> None:
    with pytest.raises(SchedulerUnavailable, match=text):
        parse(SGE, "sge", name, [submitted("qsub_terse")])


def test_a_cut_answer_is_unavailable_not_a_list_of_gone_jobs() -> None:
    text = load("sge", "status_mix").stdout
    cut = text[: text.index("<job_info>")]  # the pending list never arrived
    with pytest.raises(SchedulerUnavailable, match="cut short"):
        SGE.parse_status(cut, "", 0, [submitted("qsub_pending")])


def test_status_line_runs_in_plain_sh(tmp_path: Path) -> None:
    """The status call itself against a stand-in qstat replaying the captures: the XML always,
    ``qstat -j`` only because a job is in error state, and qstat's failure passed through."""
    for tool in ("sh", "grep", "id", "cat"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    log = tmp_path / "calls"
    mix = FIXTURES / "sge" / "status_mix.stdout"
    xml, _, reasons = mix.read_text().rpartition("</job_info>")
    (tmp_path / "xml").write_text(xml + "</job_info>\n")
    (tmp_path / "reasons").write_text(reasons.lstrip("\n"))
    qstat = tmp_path / "qstat"
    qstat.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                     f'[ -e {tmp_path}/down ] && {{ echo "error: commlib error" >&2; exit 1; }}\n'
                     f'case "$1" in -xml) cat {tmp_path}/xml;; -j) cat {tmp_path}/reasons;; esac\n')
    qstat.chmod(0o755)
    error, block = submitted("qsub_error"), submitted("qsub_block")

    def run(ids: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(SGE.status_command(ids), capture_output=True, text=True,
                              env={"PATH": str(tmp_path)}, check=False)

    res = run([error, block])
    jobs = SGE.parse_status(res.stdout, res.stderr, res.returncode, [error, block])
    assert "/nonexistent/out" in (jobs[error].reason or "")
    assert log.read_text().splitlines() == [f"-xml -u {pwd.getpwuid(os.getuid()).pw_name}",
                                            f"-j {error},{block}"]
    (tmp_path / "xml").write_text(xml.replace("<state>Eqw", "<state>qw") + "</job_info>\n")
    log.unlink()
    run([block])
    assert log.read_text().splitlines() == [f"-xml -u {pwd.getpwuid(os.getuid()).pw_name}"]
    (tmp_path / "down").touch()
    res = run([block])
    with pytest.raises(SchedulerUnavailable, match="commlib"):
        SGE.parse_status(res.stdout, res.stderr, res.returncode, [block])


# ---------------------------------------------------------------- detection


def tagged(answers: dict[str, str]) -> str:
    """The detection line's output: each dialect's probe answer (first 5 lines) tagged."""
    return "".join(f"hpcnn-probe {name} {line}\n" for name, text in answers.items()
                   for line in text.splitlines()[:5])


def test_grid_engine_is_detected_and_claims_no_other_qstat() -> None:
    sge_help = load("sge", "qstat_help")
    sge_version = load("sge", "qstat_version")  # what the PBS probes see on Grid Engine
    found = parse_detection(tagged({
        "sge": sge_help.stdout + sge_help.stderr,
        "pbspro": sge_version.stdout + sge_version.stderr,
        "torque": sge_version.stdout + sge_version.stderr,
    }))
    assert (found.dialect, found.evidence) == ("sge", "qstat -help: SGE 8.1.9")
    for other in (load("sge", "wrapper_qstat_help"), load("captured", "torque_qstat_version"),
                  load("torque", "qstat_version"), load("pbspro", "qstat_version")):
        assert SGE.detect(other.stdout + other.stderr) is None
    assert SGE.detect("UGE 8.6.4\nusage: qstat [options]") == "qstat -help: UGE 8.6.4"
    assert SGE.detect("GE 6.2u5\nusage: qstat [options]") == "qstat -help: GE 6.2u5"


def test_slurm_with_wrappers_is_still_slurm() -> None:
    wrapper = load("sge", "wrapper_qstat_help")
    version = load("captured", "torque_qstat_version")
    found = parse_detection(tagged({
        "slurm": "/usr/bin/sbatch\n/usr/bin/squeue\n/usr/bin/qsub",
        "sge": wrapper.stdout + wrapper.stderr,
        "torque": version.stdout + version.stderr,
        "pbspro": version.stdout + version.stderr,
    }))
    assert found.dialect == "slurm"


# ---------------------------------------------------------------- header


@pytest.fixture(scope="module")
def tutorial() -> Config:
    return load_config_file(REPO / "cluster.yaml.example")


def header(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#$ ")]


def with_resources(cfg: Config, **changes: object) -> Config:
    return cfg.model_copy(update={"resources": cfg.resources.model_copy(update=changes)})


def test_tutorial_job_header(tutorial: Config) -> None:
    """4 cpus, 2 gpus, 64gb, 5 h, queue gpu, mail at end: h_vmem is per slot (64G / 4)."""
    request = fold_job(tutorial, 0)
    text = render_job(tutorial, SGE, request)
    assert text.startswith("#!/bin/bash\n")
    assert header(text) == [
        f"#$ -N {SGE.job_name(request.name)}",
        "#$ -S /bin/bash",
        "#$ -cwd",
        "#$ -w e",
        "#$ -pe smp 4",
        "#$ -l gpu=2",
        "#$ -l h_rt=05:00:00",
        "#$ -l h_vmem=16G",
        "#$ -q gpu",
        "#$ -m e",
        "#$ -M me@example.org",
    ]
    assert "-V" not in " ".join(header(text))
    assert "jobid=${JOB_ID:-}" in text


def test_optional_directives_left_out_and_site_choices_replace_defaults(tutorial: Config) -> None:
    bare = with_resources(tutorial, cpus=1, gpus=0, mem=None, walltime=None, queue=None,
                          mail_events=None, mail_address=None, extra_directives=[])
    assert header(render_job(bare, SGE, fold_job(bare, 0)))[1:] == [
        "#$ -S /bin/bash", "#$ -cwd", "#$ -w e"]
    site = with_resources(tutorial, cpus=3, mem=1000, mail_events="abe",
                          extra_directives=["-pe threads 3", "-l cuda=2", "-P proj42"])
    lines = header(render_job(site, SGE, fold_job(site, 0)))
    assert "#$ -l h_vmem=334M" in lines  # 1000 MB over 3 slots, rounded up
    assert "#$ -m abe" in lines
    assert lines[-3:] == ["#$ -pe threads 3", "#$ -l cuda=2", "#$ -P proj42"]
    assert not any(line.startswith(("#$ -pe smp", "#$ -l gpu=")) for line in lines)


# ---------------------------------------------------------------- the real Grid Engine


@pytest.fixture
def sge_config(cluster_config, testbed: dict[str, str], tmp_path: Path):
    """Factory: a cluster.yaml for the test bed's Grid Engine account. h_vmem caps virtual
    memory and importing torch maps about 3 GB, so jobs ask for 4gb."""
    import yaml

    need("TESTBED_SGE_USER" in testbed,
         "the test bed has no Grid Engine account (run tests/testbed/sge.sh as root)")
    user = testbed["TESTBED_SGE_USER"]

    def make(scheduler: str = "sge", ssh: str = "fabric") -> Config:
        cfg = cluster_config(scheduler, ssh, alias=False, user=user)
        path = Path(str(cfg.source))
        data = yaml.safe_load(path.read_text())
        data["resources"]["mem"] = "4gb"
        path.write_text(yaml.safe_dump(data))
        return load_config_file(path)

    yield make
    subprocess.run(["ssh", "-i", testbed["TESTBED_KEY"], "-p", testbed["TESTBED_PORT"],
                    "-o", f"UserKnownHostsFile={testbed['TESTBED_KNOWN_HOSTS']}",
                    "-o", "BatchMode=yes", f"{user}@{testbed['TESTBED_HOST']}",
                    f"rm -rf hpcnn-tests/{tmp_path.name}-*"], capture_output=True, check=False)


def submit_job(conn: Connection, cfg: Config, name: str,
               commands: Sequence[Sequence[str]], run: str = "tests") -> tuple[str, str]:
    layout = RemoteLayout(cfg.remote_dir)
    job_dir = layout.job_dir(run, name)
    spec = JobSpec(run=run, name=name, job_dir=job_dir, commands=commands,
                   path_env=layout.nnunet_env())
    return engine.submit(conn, SGE, render_job(cfg, SGE, spec), job_dir), job_dir


@pytest.mark.testbed
@pytest.mark.parametrize(("scheduler", "ssh"), [("sge", "fabric"), ("sge", "openssh"),
                                                ("auto", "openssh")])
def test_doctor_probe_passes_on_grid_engine(sge_config, testbed, hpcnn, scheduler: str,
                                            ssh: str) -> None:
    cfg = sge_config(scheduler, ssh)
    code, out, err = hpcnn("--config", cfg.source, "doctor", "--probe", "--probe-timeout", "120")
    assert code == 0, out + err
    assert "all checks passed" in out
    for line in (f"[ok  ] ssh: {testbed['TESTBED_SGE_USER']}@127.0.0.1:2222",
                 "[ok  ] scheduler: sge (qstat -help: SGE 8.1.9), answering",
                 "[ok  ] cluster python: python", "[ok  ] probe job: job"):
        assert line in out, out
    assert "CUDA_VISIBLE_DEVICES=" in out


def follow(conn: Connection, jobs: dict[str, tuple[str, str]], timeout: float, grace: float,
           cancel_when: dict[str, JobState] | None = None
           ) -> dict[str, tuple[list[JobState], engine.Verdict]]:
    """Poll all jobs together (one remote command per poll) until each has finished. A job
    named in ``cancel_when`` is cancelled through the engine once seen in that state, and
    recorded as cancelled the way ``hpcnn cancel`` records it (services.cancel)."""
    seen: dict[str, list[JobState]] = {name: [] for name in jobs}
    verdicts: dict[str, engine.Verdict] = {}
    missing: dict[str, float | None] = dict.fromkeys(jobs)
    to_cancel = dict(cancel_when or {})
    deadline = time.time() + timeout
    while len(verdicts) < len(jobs) and time.time() < deadline:
        pending = [jobs[n] for n in jobs if n not in verdicts]
        observed, answered = engine.poll(conn, SGE, pending)
        assert answered
        for name, (job_id, _) in jobs.items():
            if name in verdicts:
                continue
            states = seen[name]
            verdict = engine.decide(observed[job_id], answered=answered,
                                    previous=states[-1] if states else JobState.PENDING,
                                    first_missing_at=missing[name], grace=grace)
            missing[name] = verdict.first_missing_at
            if not states or states[-1] != verdict.state:
                states.append(verdict.state)
            if verdict.state.finished:
                verdicts[name] = verdict
            elif to_cancel.get(name) == verdict.state:
                engine.cancel(conn, SGE, [job_id])
                states.append(JobState.CANCELLED)
                del to_cancel[name]
        time.sleep(0.5)
    assert len(verdicts) == len(jobs), f"jobs did not finish in {timeout} s: {seen}"
    return {name: (seen[name], verdicts[name]) for name in jobs}


@pytest.mark.testbed
def test_queued_running_completed_failed_and_cancelled(sge_config, testbed) -> None:
    """A 2-slot job fills the host, so the next ones queue; then a job completes with 0, one
    fails with 3 (its marker), and hpcnn cancels one while queued and one while running: both
    stay cancelled although Grid Engine forgets them at once and kills the running one with
    SIGKILL (no exit marker). A job deleted behind hpcnn's back is cancelled while qstat still
    shows ``d``, else lost with "wrote no exit marker": never completed or failed. The run's
    name carries a quote, a space and ``$(...)``: it reaches the job folder as data."""
    cfg = sge_config("sge", "openssh")
    tag = uuid.uuid4().hex[:8]
    run = f"run 'x' $(cd;touch pwned-{tag})"
    with connect(cfg) as conn:
        blocker = submit_job(conn, with_resources(cfg, cpus=2), "blocker", [["sleep", "8"]], run)
        jobs = {
            "ok": submit_job(conn, cfg, "ok", [["sleep", "2"], ["true"]], run),
            "three": submit_job(conn, cfg, "three", [["sh", "-c", "exit 3"]], run),
            "cancel-running": submit_job(conn, cfg, "cancel-running", [["sleep", "120"]], run),
            "cancel-queued": submit_job(conn, cfg, "cancel-queued", [["sleep", "120"]], run),
            "qdel-elsewhere": submit_job(conn, cfg, "qdel-elsewhere", [["sleep", "120"]], run),
        }
        conn.run(["qdel", jobs["qdel-elsewhere"][0]])
        result = follow(conn, {"blocker": blocker, **jobs}, timeout=150, grace=6,
                        cancel_when={"cancel-queued": JobState.QUEUED,
                                     "cancel-running": JobState.RUNNING})
        started = conn.read_text(f"{jobs['ok'][1]}/started") or ""
        cancelled = [jobs[n] for n in ("cancel-running", "cancel-queued", "qdel-elsewhere")]
        left, _ = engine.poll(conn, SGE, cancelled)
    states, verdict = result["ok"]
    assert states[0] == JobState.QUEUED, states
    assert JobState.RUNNING in states and states[-1] == JobState.COMPLETED, states
    assert verdict.exit_code == 0
    assert f"jobid={jobs['ok'][0]}" in started  # the job saw its own $JOB_ID
    three_states, three = result["three"]
    assert (three.state, three.exit_code) == (JobState.FAILED, 3), three_states
    assert result["cancel-running"][0][:3] == [JobState.QUEUED, JobState.RUNNING,
                                               JobState.CANCELLED]
    assert result["cancel-queued"][0][:2] == [JobState.QUEUED, JobState.CANCELLED]
    for name in ("cancel-running", "cancel-queued"):
        assert result[name][1].state == JobState.CANCELLED, result[name]
    elsewhere_states, elsewhere = result["qdel-elsewhere"]
    assert elsewhere.state in (JobState.CANCELLED, JobState.LOST), elsewhere_states
    if elsewhere.state == JobState.LOST:
        assert elsewhere.detail == "left the queue before it started and wrote no exit marker"
    for obs in left.values():  # gone from qstat, no exit marker: Grid Engine killed them
        assert obs.scheduler is None and obs.markers.exit_code is None
    for home in (Path.home(), Path(testbed["TESTBED_SGE_HOME"])):
        assert not (home / f"pwned-{tag}").exists()


@pytest.mark.testbed
def test_three_gpus_are_refused_at_submit(sge_config) -> None:
    """-w e: a request no queue can meet is refused with Grid Engine's words, not left
    waiting forever."""
    cfg = with_resources(sge_config("sge", "fabric"), gpus=3)
    with connect(cfg) as conn, pytest.raises(SchedulerError, match="no suitable queues") as info:
        submit_job(conn, cfg, "three-gpus", [["true"]])
    assert "refused job three-gpus" in str(info.value)


@pytest.mark.testbed
def test_detection_line_on_the_grid_engine_account(sge_config) -> None:
    with connect(sge_config("sge", "openssh")) as conn:
        found = parse_detection(conn.run_shell(detect_line()).stdout)
    assert (found.dialect, found.evidence) == ("sge", "qstat -help: SGE 8.1.9")
