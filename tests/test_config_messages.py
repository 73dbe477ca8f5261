"""cluster.yaml errors name the file, the line and the key, exactly (the mutation run of
bench/mutation.py showed that only their presence was tested, not what they say)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcnn.config import load_config_file
from hpcnn.errors import ConfigError


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    return str(info.value).replace(str(path), "F")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path / "none.yaml")
    assert str(info.value) == (f"{tmp_path / 'none.yaml'}: no such config file. Create one with "
                               "`hpcnn init`, or copy cluster.yaml.example.")
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path)  # a folder: exists, cannot be read as a file
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    assert error_of(tmp_path, "workspace: .\ncluster:\n  host: [a\n") == (
        "F:4: YAML syntax error: expected ',' or ']', but got '<stream end>'")
    assert error_of(tmp_path, "a: b\n\tc: d\n") == (
        "F:2: YAML syntax error: found character '\\t' that cannot start any token")


def test_top_level_must_be_a_mapping_and_empty_is_the_default(tmp_path: Path) -> None:
    assert error_of(tmp_path, "- a\n- b\n") == (
        "F:1: the top level must be a mapping of keys (cluster:, ...)")
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    cfg = load_config_file(path)
    assert (cfg.cluster.scheduler, cfg.workspace, cfg.source) == ("local", tmp_path, path)


def test_unknown_keys_and_bad_values_point_at_their_line(tmp_path: Path) -> None:
    text = ("workspace: .\n"
            "cluster:\n"
            "  scheduler: slurm\n"
            "  host: login\n"
            "  remote_dri: x\n"
            "resources:\n"
            "  extra_directives:\n"
            "    - ok\n"
            "    - \"two\\nlines\"\n"
            "training:\n"
            "  folds:\n"
            "    - 0\n"
            "    - x\n"
            "  nonsense_key: 1\n"
            "totally_unknown: 1\n")
    assert error_of(tmp_path, text).splitlines() == [
        "F:5: unknown key 'cluster.remote_dri'; did you mean 'cluster.remote_dir'?",
        "F:9: resources.extra_directives.1: contains the control character '\\n': each value "
        "is one line of plain text (got 'two\\nlines')",
        "F:13: training.folds.1: Input should be a valid integer, unable to parse string as an "
        "integer (got 'x')",
        "F:14: unknown key 'training.nonsense_key'",
        "F:15: unknown key 'totally_unknown'",
    ]


def test_suggestions_only_within_sections(tmp_path: Path) -> None:
    assert error_of(tmp_path, "clustr:\n  host: x\n") == (
        "F:1: unknown key 'clustr'; did you mean 'cluster'?")
    # "source" is where hpcnn records the file it read, never a key to suggest
    assert error_of(tmp_path, "workspace: .\nsourc: x\n") == (
        "F:2: unknown key 'sourc'; did you mean 'resources'?")
    assert error_of(tmp_path, "cluster:\n  port: 99999\n") == (
        "F:2: cluster.port: Input should be less than or equal to 65535 (got 99999)")
    assert error_of(tmp_path, "cluster:\n  port: [1]\n") == (
        "F:2: cluster.port: Input should be a valid integer")  # no "(got ...)" for a list
    assert error_of(tmp_path, "resources: 5\n") == (
        "F:1: resources: Input should be a valid dictionary or instance of ResourcesSection "
        "(got 5)")


def test_a_delete_character_is_a_control_character(tmp_path: Path) -> None:
    assert error_of(tmp_path, 'cluster:\n  login_shell: "bash\\x7f"\n') == (
        "F:2: cluster.login_shell: contains the control character '\\x7f': each value is one "
        "line of plain text (got 'bash\\x7f')")
    path = tmp_path / "ok.yaml"
    path.write_text('cluster:\n  login_shell: "bash\\x80 -lc\\t"\n', encoding="utf-8")
    assert load_config_file(path).cluster.login_shell == "bash\x80 -lc\t"


def test_relative_folders_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "cluster.yaml"
    path.write_text("workspace: ../ws\ntemplates_dir: tpl\n", encoding="utf-8")
    cfg = load_config_file(path)
    assert (cfg.workspace, cfg.templates_dir) == (tmp_path / "ws", tmp_path / "conf" / "tpl")
    path.write_text(f"templates_dir: {tmp_path / 'abs'}\n", encoding="utf-8")
    assert load_config_file(path).templates_dir == tmp_path / "abs"
