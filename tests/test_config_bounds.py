"""Every YAML file hpcnn takes is read one bounded way (hpcnn/yamlfile.py), and cluster.yaml's
times and sizes mean one thing (issue 19, items 9 and 10).

An alias bomb in ``--labels labels.yaml`` ran a minute and ended in MemoryError; ``walltime: 5``
became 5 seconds and ``mem: 64`` 64 MB without a word; a ``walltime_margin`` as long as the
walltime stopped every attempt after one epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcnn.config import ResourcesSection, load_config_file
from hpcnn.dataset.labels import load_labels_file
from hpcnn.errors import ConfigError, DataError
from hpcnn.services.train import effective_config
from hpcnn.yamlfile import MAX_BYTES

# Six levels of nine: 531441 values once expanded (old code expanded them in well under a
# second; the real bomb, a few levels more, ran out of memory). Each level is a class name.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcde", "bcdef", strict=True))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("load", "error"), [(load_labels_file, DataError),
                                             (load_config_file, ConfigError)])
def test_alias_bomb_refused_in_every_yaml_file(tmp_path: Path, load, error) -> None:
    path = write(tmp_path, "some.yaml", BOMB)
    with pytest.raises(error) as info:
        load(path)
    assert str(info.value) == (f"{path}:6: its aliases (*name) expand to more than 100,000 "
                               "values: refused (a YAML alias bomb?)\n"
                               "  fix: write the values out instead of nesting aliases")


@pytest.mark.parametrize(("load", "error"), [(load_labels_file, DataError),
                                             (load_config_file, ConfigError)])
def test_self_reference_size_and_depth_refused(tmp_path: Path, load, error) -> None:
    cases = {
        "liver: &l [Leber, *l]\n": ":1: an alias refers to the list or mapping that holds it",
        "liver: [" + "x, " * (MAX_BYTES // 3) + "]\n": ": larger than 1 MiB",
        "liver: " + "[" * 600 + "]" * 600 + "\n": ": nested too deeply",
        "liver: [Leber]\n# \udcff\n": ": not UTF-8 text",
    }
    for text, message in cases.items():
        path = tmp_path / "f.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(error) as info:
            load(path)
        assert str(info.value).startswith(f"{path}{message}")


def test_labels_yaml_still_reads(tmp_path: Path) -> None:
    """Anchors that expand to little are fine; numbers read as YAML 1.2 (no base 60)."""
    spec = load_labels_file(write(tmp_path, "labels.yaml",
                                  "liver:\n  synonyms: &s [Leber, 'Segment_1']\n"
                                  "  source_values: [1, 255]\ntumor: {synonyms: [lesion]}\n"))
    assert [(c.name, c.synonyms, c.source_values) for c in spec.classes] == [
        ("liver", ("Leber", "Segment_1"), (1, 255)), ("tumor", ("lesion",), ())]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("resources:\n  walltime: 5\n", 2,
     "resources.walltime: walltime 5 has no unit (Slurm reads a bare number as minutes, PBS "
     "and Grid Engine as seconds): write HH:MM:SS (5:00:00), or 5h, 90m, 1h30m (got 5)"),
    ("resources:\n  mem: 64\n", 2,
     "resources.mem: memory size 64 has no unit (Slurm reads a bare number as megabytes, PBS "
     "as bytes): write e.g. 64gb, 64G or 64000mb (got 64)"),
    ("resources:\n  mem: '64'\n", 2,
     "resources.mem: memory size '64' has no unit (Slurm reads a bare number as megabytes, PBS "
     "as bytes): write e.g. 64gb, 64G or 64000mb (got '64')"),
    ("training:\n  walltime_margin: 600\n", 2,
     "training.walltime_margin: walltime 600 has no unit (Slurm reads a bare number as "
     "minutes, PBS and Grid Engine as seconds): write HH:MM:SS (5:00:00), or 5h, 90m, 1h30m "
     "(got 600)"),
    ("status:\n  lost_grace: 300\n", 2,
     "status.lost_grace: walltime 300 has no unit (Slurm reads a bare number as minutes, PBS "
     "and Grid Engine as seconds): write HH:MM:SS (5:00:00), or 5h, 90m, 1h30m (got 300)"),
])
def test_bare_numbers_refused_with_the_forms(tmp_path: Path, text: str, line: int,
                                             message: str) -> None:
    path = write(tmp_path, "cluster.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == f"{path}:{line}: {message}"


def test_times_read_the_same_quoted_or_not(tmp_path: Path) -> None:
    """YAML 1.1 made ``5:00:00`` the integer 18000 and ``1:30`` 90: read as text now, with the
    same meaning, so refusing bare numbers refuses no written-out time."""
    cfg = load_config_file(write(tmp_path, "cluster.yaml",
                                 "resources:\n  walltime: 5:00:00\n  mem: 64gb\n"
                                 "training:\n  walltime_margin: 1:30\n"
                                 "status:\n  lost_grace: '0:10:00'\n"))
    assert (cfg.resources.walltime, cfg.resources.mem) == (18000, 65536)
    assert (cfg.training.walltime_margin, cfg.status.lost_grace) == (90, 600)
    assert cfg.training.walltime_margin == 90


MARGIN = ("training.walltime_margin ({margin}) is not shorter than {key} ({walltime}): each job "
          "would stop at once, after one epoch, and every continuation the same; lower "
          "training.walltime_margin (a few minutes: the time to validate and save), or 0 to "
          "train until the scheduler's stop signal, or raise {key}")


@pytest.mark.parametrize(("text", "line", "margin", "walltime"), [
    ("resources:\n  walltime: 10m\ntraining:\n  walltime_margin: 10m\n", 4, "00:10:00",
     "00:10:00"),
    ("resources:\n  walltime: 1h\ntraining:\n  walltime_margin: 2h\n", 4, "02:00:00",
     "01:00:00"),
    # The default margin (10 minutes) counts too: the line is the section's.
    ("training:\n  dataset: 1\nresources:\n  walltime: 5m\n", 1, "00:10:00", "00:05:00"),
])
def test_margin_not_shorter_than_walltime(tmp_path: Path, text: str, line: int, margin: str,
                                          walltime: str) -> None:
    path = write(tmp_path, "cluster.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == f"{path}:{line}: " + MARGIN.format(
        margin=margin, key="resources.walltime", walltime=walltime)


def test_margin_zero_or_shorter_is_fine(tmp_path: Path) -> None:
    for margin, seconds in (("0", 0), ("9m", 540)):
        cfg = load_config_file(write(tmp_path, "cluster.yaml",
                                     f"resources:\n  walltime: 10m\ntraining:\n"
                                     f"  walltime_margin: {margin}\n"))
        assert cfg.training.walltime_margin == seconds


def test_walltime_override_checked_against_the_margin(tmp_path: Path) -> None:
    """``train-all-folds --walltime`` is checked like the file; a dumped section validates
    again (memory dumps with its unit)."""
    cfg = load_config_file(write(tmp_path, "cluster.yaml",
                                 "resources:\n  walltime: 5h\n  mem: 64gb\n"))
    with pytest.raises(ConfigError) as info:
        effective_config(cfg, {"walltime": "10m", "mem": None})
    assert str(info.value) == MARGIN.format(margin="00:10:00", key="--walltime",
                                            walltime="00:10:00")
    with pytest.raises(ConfigError, match="memory size '64' has no unit"):
        effective_config(cfg, {"mem": "64"})
    changed = effective_config(cfg, {"cpus": 2})
    assert (changed.resources.cpus, changed.resources.mem, changed.resources.walltime) == (
        2, 65536, 18000)
    assert ResourcesSection.model_validate(changed.resources.model_dump()) == changed.resources
