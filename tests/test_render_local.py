"""Rendering: the body contract, user templates, template errors, and hostile names as data."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runs_helper import fold_job

from hpcnn.config import Config, EnvironmentSection, TrainingSection
from hpcnn.errors import TemplateError
from hpcnn.jobs import engine as jobs
from hpcnn.jobs.model import JobSpec
from hpcnn.jobs.script import builtin_templates_dir, render_job
from hpcnn.remote.local import LocalConnection
from hpcnn.schedulers import JobState, get_dialect

LOCAL = get_dialect("local")


def test_builtin_templates_are_found() -> None:
    base = builtin_templates_dir()
    for name in ["job.sh.j2", "body.sh.j2", *(f"header/{d}.sh.j2" for d in
                                             ("torque", "pbspro", "slurm", "local"))]:
        assert (base / name).is_file(), name


def test_fold_job_runs_nnunet_train_with_workspace_paths(tmp_path: Path) -> None:
    cfg = Config(workspace=tmp_path, training=TrainingSection(dataset="501", device="cpu"))
    request = fold_job(cfg, 3)
    text = render_job(cfg, LOCAL, request)
    assert request.name == "hpcnn-501-nnUNetTrainer-3d_fullres-f3-a1"
    assert f"export nnUNet_preprocessed={tmp_path}/nnUNet_preprocessed" in text
    launcher = f"{tmp_path}/.hpcnn/lib/launcher.py"
    assert (f"{launcher} Dataset501_Liver 3d_fullres 3 -tr nnUNetTrainer -p nnUNetPlans "
            "-device cpu") in text
    assert f"export nnUNet_extTrainer={tmp_path}/.hpcnn/lib/trainers" in text
    assert "trap hpcnn_on_exit EXIT" in text


def test_relative_remote_dir_lives_under_home(tmp_path: Path) -> None:
    cfg = Config.model_validate({"cluster": {"scheduler": "slurm", "host": "h",
                                             "remote_dir": "my work"},
                                 "training": {"dataset": "7"}})
    text = render_job(cfg, LOCAL, fold_job(cfg, 0))
    assert "export nnUNet_results=\"$HOME\"/'my work/nnUNet_results'" in text


def test_user_template_overrides_one_file(tmp_path: Path) -> None:
    tdir = tmp_path / "tpl" / "header"
    tdir.mkdir(parents=True)
    (tdir / "local.sh.j2").write_text("# my own header for {{ job_name }}\n")
    cfg = Config(workspace=tmp_path, templates_dir=tmp_path / "tpl")
    text = render_job(cfg, LOCAL, JobSpec(run="r", name="j", job_dir="/x", commands=[["true"]]))
    assert "# my own header for j" in text
    assert "hpcnn_marker started" in text  # the body still comes from hpcnn


def test_user_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "body.sh.j2").write_text("echo ok\n{% if %}\n")
    cfg = Config(workspace=tmp_path, templates_dir=tdir)
    with pytest.raises(TemplateError) as err:
        render_job(cfg, LOCAL, JobSpec(run="r", name="j", job_dir="/x", commands=[]))
    assert f"{tdir / 'body.sh.j2'}:2" in str(err.value)


def test_user_template_unknown_variable(tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "body.sh.j2").write_text("echo {{ no_such_thing }}\n")
    cfg = Config(workspace=tmp_path, templates_dir=tdir)
    with pytest.raises(TemplateError, match="no_such_thing"):
        render_job(cfg, LOCAL, JobSpec(run="r", name="j", job_dir="/x", commands=[]))


def test_setup_lines_are_checked_one_by_one(tmp_path: Path) -> None:
    from hpcnn.jobs.script import render_setup

    cfg = Config(workspace=tmp_path, environment=EnvironmentSection(
        setup=["source ~/env.sh  # my env", "module load cuda &"]))
    lines = render_setup(cfg).splitlines()
    first = lines.index("source ~/env.sh  # my env")
    assert lines[first + 1].startswith('hpcnn_rc=$?; if [ "$hpcnn_rc" -ne 0 ]')
    assert lines[first + 2] == "module load cuda &"


def test_missing_templates_dir(tmp_path: Path) -> None:
    cfg = Config(workspace=tmp_path, templates_dir=tmp_path / "nope")
    with pytest.raises(TemplateError, match="does not exist"):
        render_job(cfg, LOCAL, JobSpec(run="r", name="j", job_dir="/x", commands=[]))


def test_missing_header_template(tmp_path: Path) -> None:
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "job.sh.j2").write_text("{% include 'header/nosuch.sh.j2' %}\n")
    cfg = Config(workspace=tmp_path, templates_dir=tdir)
    with pytest.raises(TemplateError, match="'header/nosuch.sh.j2' not found"):
        render_job(cfg, LOCAL, JobSpec(run="r", name="j", job_dir="/x", commands=[]))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hpcnn-") as folder:
        yield Path(folder)


def test_hostile_names_reach_the_job_as_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             hpcnn, short_tmp: Path) -> None:
    """Spaces, quotes and $(...) in the workspace path, job name, variables and arguments must
    arrive verbatim; the file that an injected command would create must not appear."""
    monkeypatch.setenv("HPCNN_LOCALQ_DIR", str(tmp_path / "q"))
    # The canary's path appears three times in a folder name: a short folder of its own keeps
    # that name within the 255 bytes a name may have (tmp_path is long under pytest-xdist).
    canary = short_tmp / "pwned"
    evil = f"it's a \"test\" $(touch {canary}) `touch {canary}` ;touch {canary}"
    root = tmp_path / evil.replace("/", "_")
    root.mkdir()
    cfg = Config(workspace=root, environment=EnvironmentSection(variables={"EVIL": evil}))
    job_dir = str(root / ".hpcnn" / "runs" / evil.replace("/", "_") / "job")
    out = root / "seen.txt"
    request = JobSpec(run=evil, name=evil, job_dir=job_dir,
                         commands=[["bash", "-c", 'printf "%s\\n%s\\n" "$EVIL" "$1" > "$2"', "x",
                                    evil, str(out)]])
    job_id = jobs.submit(LocalConnection(), LOCAL, render_job(cfg, LOCAL, request), job_dir)
    verdict = jobs.wait_for(LocalConnection(), LOCAL, job_id, job_dir, timeout=30, interval=0.2)
    assert verdict.state == JobState.COMPLETED, verdict
    assert out.read_text().splitlines() == [evil, evil]
    assert not canary.exists()
    # A dataset named with an injection attempt never reaches a script: a run's dataset is
    # always a resolved DatasetNNN_Name, and this one names none.
    code, out, err = hpcnn("render", "-s", "local", "--dataset", evil)
    assert code == 2 and "no dataset" in err and not out
    time.sleep(0.2)
    assert not canary.exists()
