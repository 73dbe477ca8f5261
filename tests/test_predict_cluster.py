"""``hpcnn predict --on-cluster``: the prediction as one job where the folds are.

On the embedded default (the local scheduler, jobs on this machine) with the tiny model trained
once per session (tests/models.py): results under the inputs' own names, voxel for voxel those of
a local ``hpcnn predict`` with the same fold and ``--fast`` (the job with the launcher's inference
checkpoint, the local one with nnU-Net's full checkpoint); a job that fails (its checkpoint
removed while it waited in the queue) is said with its error tail, exit 11 and no output; what is
refused before anything is submitted (no results, unfinished folds, an environment without
nnunetv2). Then once on the real test bed (sshd + Slurm): the model pushed into the cluster's
nnUNet_results as training would leave it, the job through the slurm dialect, the same results.
One fold, ``--fast``, 32^3 volumes: each prediction is a few seconds of network on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import testbed_ssh as ssh_argv
from models import fake_model, tiny_model, unseen_cases  # noqa: F401  (tiny_model: fixture)
from runs_helper import record_run as record_session_run
from testbed_train import make_bed, ssh_config  # noqa: F401  (ssh_config: fixture)

HPCNN = [sys.executable, "-m", "hpcnn.cli.entry"]
MODEL = "Dataset501_Tiny/hpcnnTinyTrainer__nnUNetPlans__3d_fullres"
NAMES = ["Patient A (1).nrrd", "sub/x-ray.scan.v2.nrrd", "ünï cödé.nii.gz"]


def cli(ws: Path, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env["HPCNN_LOCALQ_DIR"] = str(ws / "queue")
    return subprocess.run([*HPCNN, "--config", str(ws / "cluster.yaml"), *map(str, args)],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def record_run(config: Path) -> None:
    """The run the tiny model belongs to, as train-all-folds records it, so --run resolves."""
    from hpcnn.config import load_config_file
    from hpcnn.jobs.model import Run
    from hpcnn.services.session import Session

    with Session(load_config_file(config)) as session:
        record_session_run(session, Run("Dataset501_Tiny", "hpcnnTinyTrainer", "nnUNetPlans",
                                        "3d_fullres"))


def local_workspace(root: Path, setup: list[str] | None = None) -> Path:
    ws = root / "ws"
    ws.mkdir(parents=True)
    (ws / "cluster.yaml").write_text(
        "resources: {cpus: 1, gpus: 0}\n"
        "training: {dataset: Tiny, trainer: hpcnnTinyTrainer, device: cpu}\n"
        + (f"environment: {{setup: {json.dumps(setup)}}}\n" if setup else ""))
    record_run(ws / "cluster.yaml")
    return ws


def arrays(folder: Path) -> dict[str, tuple]:
    """Every result image under ``folder``: its voxels and geometry, by relative name."""
    import SimpleITK as sitk

    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in ("hpcnn_predict.json", "hpcnn_predict.log"):
            image = sitk.ReadImage(str(path))
            found[path.relative_to(folder).as_posix()] = (
                sitk.GetArrayFromImage(image).tolist(), image.GetOrigin(), image.GetSpacing(),
                image.GetDirection())
    return found


@pytest.fixture(scope="module")
def cluster_ws(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A workspace on the local scheduler whose jobs' nnUNet_results hold the tiny model and
    whose registry knows its run; images to predict in ``in``."""
    from hpcnn.nnunet.launcher import write_inference_checkpoint

    ws = local_workspace(tmp_path_factory.mktemp("predict-cluster"))
    shutil.copytree(tiny_model, ws / "nnUNet_results" / MODEL)
    # Fold 0 as hpcnn's launcher leaves it (an inference checkpoint beside nnU-Net's), fold 1 as
    # one trained before it wrote one.
    write_inference_checkpoint(ws / "nnUNet_results" / MODEL / "fold_0")
    unseen_cases(ws.parent / "in", NAMES)
    return ws


def test_results_equal_a_local_predict_under_the_inputs_names(cluster_ws: Path,
                                                             sitk_available: None) -> None:
    src, out, here = (cluster_ws.parent / name for name in ("in", "out", "here"))
    res = cli(cluster_ws, "predict", src, out, "--on-cluster", "--folds", "0", "--fast",
              "--interval", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fold(s) 0 (fold(s) 2, 3, 4 not trained" in res.stdout
    assert re.search(r"submitted predict: job \d+ \(hpcnn-501-hpcnnTinyTrainer-3d_fullres-"
                     r"predict-[0-9a-f]{8}\)", res.stdout), res.stdout
    assert "job " in res.stdout and ": running" in res.stdout
    assert "3 result(s) in" in res.stdout
    local = cli(cluster_ws, "predict", src, here, "--model",
                cluster_ws / "nnUNet_results" / MODEL, "--folds", "0", "--fast", "--device", "cpu")
    assert local.returncode == 0, local.stdout + local.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted([*NAMES, "hpcnn_predict.json"])
    assert arrays(out) == arrays(here)
    record = json.loads((out / "hpcnn_predict.json").read_text())
    assert record["folds"] == ["0"] and record["fast"] is True
    assert record["model"] == f"local:{cluster_ws / 'nnUNet_results' / MODEL}"
    assert record["job"].startswith("hpcnn-501-") and record["nnunetv2_version"]
    assert [c["output"] for c in record["cases"]] == NAMES
    # The images' copies where the job ran are gone; the job's logs stay; the registry knows it.
    assert not [p for p in (cluster_ws / ".hpcnn" / "predict").iterdir() if p.is_dir()]
    pid = record["job"].rsplit("-", 1)[1]
    assert json.loads((cluster_ws / ".hpcnn" / "predict" / f"{pid}.json").read_text())[
        "state"] == "done"
    job_dir = cluster_ws / ".hpcnn" / "runs" / "501-hpcnnTinyTrainer-3d_fullres" / record["job"]
    assert (job_dir / "exit_code").read_text().startswith("0\n")
    # The job loaded the inference checkpoint, the local predict nnU-Net's: identical results.
    assert "-chk checkpoint_final_inference.pth" in (job_dir / "job.sh").read_text()
    assert (job_dir / "job.sh").stat().st_mode & 0o077 == 0
    again = cli(cluster_ws, "predict", "--attach", pid)
    assert again.returncode == 0 and "already brought back" in again.stdout


def test_ctrl_c_leaves_the_job_and_a_failed_job_says_why(cluster_ws: Path) -> None:
    """The job waits behind another one in the queue: Ctrl-C while following leaves it there,
    ``--attach ID --no-follow`` looks once; then fold 1's checkpoint disappears before the job
    starts, and following it again reports the failure with the job's error tail."""
    src, out = cluster_ws.parent / "in", cluster_ws.parent / "out-failed"
    gate = cluster_ws.parent / "go"
    blocker = cluster_ws.parent / "blocker.sh"
    blocker.write_text("#LOCALQ max_parallel=1\nfor i in $(seq 600); do "
                       f"[ -e {shlex.quote(str(gate))} ] && exit 0; sleep 0.2; done\n")
    env = {**os.environ, "HPCNN_LOCALQ_DIR": str(cluster_ws / "queue"), "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "hpcnn.schedulers.localq", "submit", "--workdir",
                    str(cluster_ws.parent), str(blocker)], env=env, check=True,
                   capture_output=True)
    checkpoint = cluster_ws / "nnUNet_results" / MODEL / "fold_1" / "checkpoint_final.pth"
    aside = checkpoint.with_name("aside.pth")
    try:
        follower = subprocess.Popen(
            [*HPCNN, "--config", str(cluster_ws / "cluster.yaml"), "predict", str(src), str(out),
             "--on-cluster", "--folds", "1", "--fast", "--interval", "1"],
            cwd=cluster_ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # Ctrl-C as at a terminal: a test run started in the background (`cmd &`, nohup)
            # ignores SIGINT, and a child inherits that, so the follower would never see it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        said = []
        for line in follower.stdout:  # type: ignore[union-attr]
            said.append(line)
            if ": queued" in line:
                break
        follower.send_signal(signal.SIGINT)
        rest, err = follower.communicate(timeout=60)
        assert follower.returncode == 10, "".join(said) + rest + err
        pid = re.search(r"stopped following; the job goes on; bring its results into "
                        rf"{re.escape(str(out))} with: hpcnn predict --attach ([0-9a-f]{{8}})",
                        err).group(1)
        assert "Traceback" not in err and not out.exists()
        res = cli(cluster_ws, "predict", "--attach", pid, "--no-follow")
        assert res.returncode == 10 and ": queued" in res.stdout, res.stdout + res.stderr
        checkpoint.rename(aside)
        gate.touch()
        res = cli(cluster_ws, "predict", "--attach", pid, "--interval", "1")
        assert res.returncode == 11, res.stdout + res.stderr
        assert re.search(r"error: prediction job \d+ \(hpcnn-501-\S+-predict-" + pid +
                         r"\) failed \(exit 1\)", res.stderr), res.stderr
        assert f"nothing was written to {out}" in res.stderr
        assert "    | " in res.stderr and "checkpoint_final.pth" in res.stderr
        assert "fix: " in res.stderr and "err.log" in res.stderr
        assert not out.exists()
        assert not (cluster_ws / ".hpcnn" / "predict" / pid).exists()
        again = cli(cluster_ws, "predict", "--attach", pid[:4])
        assert again.returncode == 11 and "failed (exit 1)" in again.stderr
    finally:
        gate.touch()
        if aside.exists():
            aside.rename(checkpoint)


def test_refused_before_anything_is_submitted(tmp_path: Path, sitk_available: None,
                                              nnunet_available: None) -> None:
    from test_predict import _nonfinite, image

    ws = local_workspace(tmp_path)
    image(tmp_path / "in" / "a.nrrd")
    out = tmp_path / "out"
    res = cli(ws, "predict", tmp_path / "in", out, "--on-cluster")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no results of run 501-hpcnnTinyTrainer-3d_fullres" in res.stderr
    assert "fix: train it first" in res.stderr
    results = ws / "nnUNet_results"
    fake_model(results, dataset="Dataset501_Tiny", finished=(), unfinished=("0", "3"))
    res = cli(ws, "predict", tmp_path / "in", out, "--on-cluster")
    assert res.returncode == 2 and "no finished fold (fold(s) 1, 2, 4 not trained" in res.stderr
    shutil.rmtree(results)
    fake_model(results, dataset="Dataset501_Tiny", finished=("0",), unfinished=("2",))
    res = cli(ws, "predict", tmp_path / "in", out, "--on-cluster", "--folds", "0,2")
    assert res.returncode == 2 and "fold(s) 2 have no checkpoint_final.pth (finished: 0)" in \
        res.stderr
    _nonfinite(tmp_path / "nan" / "n.nii.gz")  # staging runs import's checks too (issue 19)
    res = cli(ws, "predict", tmp_path / "nan", out, "--on-cluster")
    assert res.returncode == 2 and "n.nii.gz: 1 voxel(s) are NaN" in res.stderr, res.stderr
    res = cli(ws, "predict", tmp_path / "in", out, "--on-cluster", "--model", results)
    assert res.returncode == 2 and "--model names a folder on this machine" in res.stderr
    res = cli(ws, "predict", "--attach", "0123")
    assert res.returncode == 2 and "is no prediction job of this workspace" in res.stderr

    broken = local_workspace(tmp_path / "broken", setup=["source /nonexistent/activate"])
    shutil.copytree(results, broken / "nnUNet_results")
    res = cli(broken, "predict", tmp_path / "in", out, "--on-cluster")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "nnunetv2 is not importable where jobs run" in res.stderr
    for folder in (ws, broken):
        assert not (folder / ".hpcnn" / "runs").exists() and not (folder / "queue").exists()
        assert not list((folder / ".hpcnn" / "predict").glob("*"))
    assert not out.exists()


# ---- the real test bed: sshd + Slurm


def test_on_the_testbed_through_slurm(tiny_model: Path, tmp_path: Path,  # noqa: F811
                                      testbed: dict[str, str], ssh_config: Path,  # noqa: F811
                                      testbed_environment: list[str],
                                      sitk_available: None) -> None:
    bed = make_bed(tmp_path, None, testbed, ssh_config, testbed_environment, scheduler="slurm")
    try:
        # The model as train-all-folds leaves it in the cluster's nnUNet_results (one fold).
        results = shlex.quote(f"{bed.remote_dir}/nnUNet_results")
        tar = subprocess.Popen(["tar", "-C", str(tiny_model.parent.parent), "-cf", "-",
                                "--exclude", "fold_1", MODEL], stdout=subprocess.PIPE)
        subprocess.run([*ssh_argv(testbed), f"mkdir -p {results} && tar -C {results} -xf -"],
                       stdin=tar.stdout, check=True, timeout=120)
        assert tar.wait() == 0
        record_run(bed.config)
        unseen_cases(tmp_path / "in", NAMES[:2])
        res = bed.cli("predict", str(tmp_path / "in"), str(tmp_path / "out"), "--on-cluster",
                      "--fast", "--interval", "2")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "fold(s) 0 (fold(s) 1, 2, 3, 4 not trained" in res.stdout
        assert "2 result(s) in" in res.stdout
        local = cli(bed.ws, "predict", tmp_path / "in", tmp_path / "here", "--model",
                    tiny_model, "--folds", "0", "--fast", "--device", "cpu")
        assert local.returncode == 0, local.stdout + local.stderr
        assert arrays(tmp_path / "out") == arrays(tmp_path / "here")
        assert sorted(arrays(tmp_path / "out")) == sorted(NAMES[:2])
        # Only the job's logs stay on the cluster; the images' copies are gone.
        assert bed.remote("ls -A .hpcnn/predict").strip() == ""
    finally:
        bed.remove_remote()
