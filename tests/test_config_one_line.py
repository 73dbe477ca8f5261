"""Values that land in a job header, script or remote command are one line of text (issue 12):
a newline in ``extra_directives`` would otherwise become a command run before hpcnn's body.
The error names the key; a remote_dir that commands would read as an option is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcnn.config import load_config_file
from hpcnn.errors import ConfigError

BASE = "cluster:\n  scheduler: slurm\n  host: h\n"

# (YAML that sets one value, the key the error must name); YAML's "\0", "\r", "\e" escapes
# write NUL, CR and ESC into the value.
HOSTILE = [
    ('resources:\n  extra_directives: ["#SBATCH --x\\ntouch pwned"]\n',
     "resources.extra_directives.0"),
    ('resources:\n  queue: "gpu\\n"\n', "resources.queue"),
    ('resources:\n  mail_address: "me@example.org\\rBcc: x"\n', "resources.mail_address"),
    ('resources:\n  mail_events: "e\\n"\n', "resources.mail_events"),
    ('environment:\n  variables:\n    FOO: "a\\nb"\n', "environment.variables.FOO"),
    ('environment:\n  setup: ["module load x\\0"]\n', "environment.setup.0"),
    ('training:\n  trainer: "nnUNetTrainer\\e[2K"\n', "training.trainer"),
    ('training:\n  plans: "p\\nq"\n', "training.plans"),
    ('training:\n  configuration: "3d_fullres\\nx"\n', "training.configuration"),
    ('training:\n  dataset: "Dataset001\\nx"\n', "training.dataset"),
    ('cluster:\n  scheduler: slurm\n  host: h\n  remote_dir: "hpcnn\\n/tmp"\n',
     "cluster.remote_dir"),
]


def load(tmp_path: Path, text: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return load_config_file(path)


@pytest.mark.parametrize(("yaml_text", "key"), HOSTILE, ids=[key for _, key in HOSTILE])
def test_control_characters_are_refused_naming_the_key(tmp_path: Path, yaml_text: str,
                                                       key: str) -> None:
    text = yaml_text if yaml_text.startswith("cluster:") else BASE + yaml_text
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert f"{key}: contains the control character" in message, message


def test_a_tab_is_plain_spacing(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + 'resources:\n  extra_directives: ["#SBATCH\\t--exclusive"]\n')
    assert cfg.resources.extra_directives == ["#SBATCH\t--exclusive"]


@pytest.mark.parametrize("remote_dir", ["-rf", "~/--help"])
def test_remote_dir_read_as_an_option_is_refused(tmp_path: Path, remote_dir: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster.remote_dir: starts with '-'.*\./-"):
        load(tmp_path, BASE + f"  remote_dir: '{remote_dir}'\n")


def test_remote_dir_dot_slash_dash_is_fine(tmp_path: Path) -> None:
    assert load(tmp_path, BASE + "  remote_dir: ./-odd\n").remote_dir == "./-odd"
