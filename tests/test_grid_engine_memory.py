"""Grid Engine's h_vmem caps VIRTUAL memory: a fold whose allocation was refused there gets a
hint that says what to raise and why, and doctor warns before any job is submitted (issue 19,
rough edges). Fast: a recorded failed fold read through a connection that runs here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from runs_helper import record_run

from hpcnn.config import Config, load_config_file
from hpcnn.jobs.model import FOLD, Run, job_name
from hpcnn.services.doctor.base import DoctorContext, Outcome
from hpcnn.services.doctor.remote import check_job_memory
from hpcnn.services.session import Session
from hpcnn.state import JobRow

RUN = Run("Dataset501_Tiny", "nnUNetTrainer", "nnUNetPlans", "3d_fullres")
TORCH_ALLOCATION = (
    "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
    "allocate memory: you tried to allocate 11059200 bytes. Error code 12 (Cannot allocate "
    "memory)")


def _config(tmp_path: Path, scheduler: str, resources: dict) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    config = ws / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "workspace": str(ws), "resources": resources,
        "cluster": {"scheduler": scheduler, "host": "cluster",
                    "remote_dir": str(tmp_path / "remote")}}))
    return config


@pytest.mark.parametrize("scheduler", ["sge", "slurm"])
def test_a_refused_allocation_is_recognised_with_what_to_raise(
        tmp_path: Path, scheduler: str, hpcnn, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcnn.remote.local import LocalConnection

    monkeypatch.setattr("hpcnn.remote.connect", lambda cfg: LocalConnection())
    config = _config(tmp_path, scheduler, {"mem": "4gb", "cpus": 4})
    with Session(load_config_file(config)) as session:
        record_run(session, RUN)
        name = job_name(RUN.id, 0)
        row = session.registry.add(JobRow(
            name=name, run=RUN.id, kind=FOLD, fold=0, job_dir=session.remote.job_dir(RUN.id, name),
            scheduler=scheduler, state="failed", scheduler_id="15", exit_code=1))
    Path(row.job_dir).mkdir(parents=True)
    (Path(row.job_dir) / "err.log").write_text(f"Traceback (most recent call last):\n"
                                               f"{TORCH_ALLOCATION}\n")
    code, out, _ = hpcnn("--config", config, "status", "--json")
    assert code == 11, out
    hint = json.loads(out)["folds"][0]["hint"]
    if scheduler == "sge":
        assert "h_vmem=1G per slot x 4 slot(s)" in hint and "VIRTUAL memory" in hint, hint
        assert "Raise resources.mem to at least 21gb" in hint, hint
    else:
        assert "ran out of memory: raise resources.mem" in hint and "h_vmem" not in hint, hint


def test_doctor_warns_when_h_vmem_is_below_what_training_maps(tmp_path: Path) -> None:
    def result(scheduler: str, resources: dict):  # noqa: ANN202
        cfg = Config.model_validate({"cluster": {"scheduler": scheduler, "host": "h"},
                                     "resources": resources, "workspace": str(tmp_path)})
        return check_job_memory(DoctorContext(Session(cfg), {"dialect": scheduler}))

    low = result("sge", {"mem": "4gb", "cpus": 4})
    assert low.outcome == Outcome.WARN and "h_vmem=1G per slot" in low.detail
    assert "at least 21gb" in low.fix
    fewer = result("sge", {"mem": "16gb", "cpus": 2})  # 3 processes need 13 GB
    assert fewer.outcome == Outcome.OK, fewer.detail
    assert result("slurm", {"mem": "4gb", "cpus": 4}).outcome == Outcome.OK
    assert not (tmp_path / ".hpcnn").exists()  # a config check records nothing


def test_doctor_ends_by_naming_its_warnings(tmp_path: Path, hpcnn,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A Grid Engine config with too little h_vmem through the whole doctor chain (a
    connection that runs here, a qstat that answers like Grid Engine's)."""
    from hpcnn.remote.local import LocalConnection

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qstat").write_text(
        "#!/bin/sh\ncase \"$1\" in -help) echo 'SGE 8.1.9';; "
        "*) echo '<?xml version=\"1.0\"?><job_info><queue_info></queue_info>"
        "<job_info></job_info></job_info>';; esac\n")
    (bin_dir / "qstat").chmod(0o755)
    for tool in ("qsub", "qdel", "qconf"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    python = Path(sys.executable).parent  # the cluster's python3: this one, with nnunetv2
    monkeypatch.setenv("PATH", f"{bin_dir}:{python}:{os.environ['PATH']}")
    monkeypatch.setattr("hpcnn.remote.connect", lambda cfg: LocalConnection())
    config = _config(tmp_path, "sge", {"mem": "4gb", "cpus": 4})
    code, out, err = hpcnn("--config", config, "doctor")
    assert "[warn] job memory: resources.mem 4gb becomes h_vmem=1G per slot" in out, out + err
    assert code == 0 and "all checks passed, with 1 warning(s): job memory" in out, out + err
