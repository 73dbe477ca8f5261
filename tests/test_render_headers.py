"""The three cluster headers render the tutorial's job (cluster.yaml.example: walltime
5:00:00, nodes=1:ppn=4:gpus=2, queue gpu, 64gb, mail at end) in each scheduler's own words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from runs_helper import fold_job

from hpcnn.config import Config, load_config_file
from hpcnn.jobs.script import render_job
from hpcnn.schedulers import get_dialect

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "torque": [
        "#PBS -l nodes=1:ppn=4:gpus=2",
        "#PBS -l walltime=05:00:00",
        "#PBS -l mem=64gb",
        "#PBS -q gpu",
        "#PBS -m e",
        "#PBS -M me@example.org",
    ],
    "pbspro": [
        "#PBS -l select=1:ncpus=4:ngpus=2:mem=64gb",
        "#PBS -l walltime=05:00:00",
        "#PBS -q gpu",
        "#PBS -m e",
        "#PBS -M me@example.org",
    ],
    "slurm": [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",  # nnU-Net is one process: the cpus are its threads
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --time=05:00:00",
        "#SBATCH --mem=64G",
        "#SBATCH --partition=gpu",
        "#SBATCH --mail-type=END",
        "#SBATCH --mail-user=me@example.org",
    ],
}


@pytest.fixture(scope="module")
def tutorial() -> Config:
    return load_config_file(REPO / "cluster.yaml.example")


def header(text: str) -> list[str]:
    """The directive lines: everything between the shebang and the body."""
    return [line for line in text.splitlines() if re.match(r"#(PBS|SBATCH) ", line)]


@pytest.mark.parametrize("dialect_name", sorted(EXPECTED))
def test_tutorial_job_in_each_dialect(tutorial: Config, dialect_name: str) -> None:
    dialect = get_dialect(dialect_name)
    request = fold_job(tutorial, 0)
    text = render_job(tutorial, dialect, request)
    lines = header(text)
    name_line, *directives = lines
    assert directives == EXPECTED[dialect_name]
    assert name_line.endswith(dialect.job_name(request.name))
    assert text.startswith("#!/bin/bash\n")
    assert "-V" not in " ".join(lines)  # variables are exported by the script itself


def test_torque_job_name_fits_and_pbs_pro_keeps_it(tutorial: Config) -> None:
    request = fold_job(tutorial, 3)
    torque = header(render_job(tutorial, get_dialect("torque"), request))[0]
    assert len(torque.removeprefix("#PBS -N ")) <= 15
    pbspro = header(render_job(tutorial, get_dialect("pbspro"), request))[0]
    assert pbspro == f"#PBS -N {request.name}"


def test_optional_directives_are_left_out(tutorial: Config) -> None:
    bare = tutorial.model_copy(update={"resources": tutorial.resources.model_copy(update={
        "gpus": 0, "mem": None, "walltime": None, "queue": None, "mail_events": None,
        "mail_address": None, "extra_directives": ["-A project42"]})})
    request = fold_job(bare, 0)
    assert header(render_job(bare, get_dialect("torque"), request))[1:] == [
        "#PBS -l nodes=1:ppn=4", "#PBS -A project42"]
    assert header(render_job(bare, get_dialect("pbspro"), request))[1:] == [
        "#PBS -l select=1:ncpus=4", "#PBS -A project42"]
    assert header(render_job(bare, get_dialect("slurm"), request))[1:] == [
        "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=4",
        "#SBATCH -A project42"]
