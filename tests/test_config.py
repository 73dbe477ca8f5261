"""cluster.yaml loading: every bad input gives a message naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcnn.config import load_config
from hpcnn.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_example_loads_with_tutorial_values() -> None:
    cfg = load_config(REPO / "cluster.yaml.example")
    assert cfg.cluster.scheduler == "torque"
    assert cfg.resources.walltime == 5 * 3600
    assert (cfg.resources.nodes, cfg.resources.cpus, cfg.resources.gpus) == (1, 4, 2)
    assert cfg.resources.mem == 64 * 1024
    assert cfg.resources.queue == "gpu"
    assert cfg.resources.mail_events == "e"
    assert cfg.training.walltime_margin == 600
    assert cfg.status.lost_grace == 300


def test_every_schema_key_is_documented_in_example() -> None:
    """A key missing from cluster.yaml.example is a key users cannot discover."""
    from hpcnn.config import Config

    text = (REPO / "cluster.yaml.example").read_text()
    for name, field in Config.model_fields.items():
        if name == "source":
            continue
        assert f"{name}:" in text, name
        sub = field.annotation
        for key in getattr(sub, "model_fields", {}):
            assert f"  {key}:" in text, f"{name}.{key}"


def test_no_file_means_local_defaults(workspace: Path) -> None:
    cfg = load_config()
    assert cfg.cluster.scheduler == "local" and cfg.cluster.is_local
    assert cfg.workspace == workspace
    assert cfg.remote_dir == str(workspace)


def test_env_variable_and_cwd_lookup(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace / "cluster.yaml").write_text("local: {max_parallel: 3}\n")
    assert load_config().local.max_parallel == 3
    other = workspace / "other.yaml"
    other.write_text("local: {max_parallel: 5}\n")
    monkeypatch.setenv("HPCNN_CONFIG", str(other))
    assert load_config().local.max_parallel == 5
    assert load_config(workspace / "cluster.yaml").local.max_parallel == 3


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such config file.*hpcnn init"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  host: a\n  port: [22\nresources: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:" in str(err.value) and "YAML syntax error" in str(err.value)


def test_unknown_key_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  scheduler: local\nresources:\n  walltme: 5h\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}:4" in msg
    assert "unknown key 'resources.walltme'" in msg
    assert "did you mean 'resources.walltime'" in msg


def test_unknown_section_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "resource:\n  gpus: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'resources'"):
        load_config(path)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "resources:\n  gpus: two\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:2" in str(err.value) and "resources.gpus" in str(err.value)
    assert "'two'" in str(err.value)


@pytest.mark.parametrize("value", ["5 hours", "99:99:99", "-1h", "0"])
def test_bad_walltime(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"resources:\n  walltime: '{value}'\n")
    with pytest.raises(ConfigError, match=r"resources.walltime"):
        load_config(path)


@pytest.mark.parametrize("value", ["lots", "64 parsecs", "gb"])
def test_bad_memory(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"resources:\n  mem: '{value}'\n")
    with pytest.raises(ConfigError, match=r"resources.mem.*cannot read memory"):
        load_config(path)


def test_unknown_scheduler(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  scheduler: lsf\n  host: h\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "cluster.scheduler" in str(err.value) and "torque" in str(err.value)


def test_remote_scheduler_needs_host(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  scheduler: slurm\n")
    with pytest.raises(ConfigError, match="set cluster.host"):
        load_config(path)


def test_relative_workspace_is_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("workspace: ../data\n")
    assert load_config(path).workspace == (tmp_path / "data").resolve()


def test_cli_reports_config_error_with_exit_2(tmp_path: Path, hpcnn) -> None:
    path = write(tmp_path, "resources:\n  walltme: 5h\n")
    code, out, err = hpcnn("--config", path, "render", "-s", "local")
    assert code == 2
    assert "did you mean 'resources.walltime'" in err and "Traceback" not in err


@pytest.mark.parametrize(("key", "value"), [("host", "-oProxyCommand=touch /tmp/x"),
                                            ("host", "a b"), ("user", "-l root"),
                                            ("remote_dir", "~other/x"), ("remote_dir", "~")])
def test_cluster_values_that_ssh_would_misread_are_refused(tmp_path: Path, key: str,
                                                           value: str) -> None:
    path = write(tmp_path, f"cluster:\n  scheduler: slurm\n  host: h\n  {key}: '{value}'\n")
    with pytest.raises(ConfigError, match=f"cluster.{key}"):
        load_config(path)


def test_remote_dir_under_home(tmp_path: Path) -> None:
    path = write(tmp_path, "cluster:\n  scheduler: slurm\n  host: h\n  remote_dir: ~/work\n")
    assert load_config(path).remote_dir == "work"
    local = write(tmp_path, "workspace: ws\ncluster:\n  remote_dir: jobs\n")
    assert load_config(local).remote_dir == str((tmp_path / "ws" / "jobs").resolve())
