"""pyproject's dependencies (issue 12): no release with a known hole, and an upper bound where
the next major version would break hpcnn, one that the tested versions satisfy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (CI's); 3.10 has no TOML reader

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# The libraries whose internals or major API hpcnn relies on.
BOUNDED = ["click", "jinja2", "pydantic", "fabric", "paramiko"]


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    found += [Requirement(r) for r in project["optional-dependencies"]["nnunet"]]
    return {r.name.lower(): r for r in found}


@pytest.mark.parametrize(("name", "vulnerable", "fixed"), [
    ("jinja2", "3.1.5", "3.1.6"),      # CVE-2025-27516 and the earlier ones
    ("paramiko", "3.3.1", "3.4.0"),    # Terrapin, CVE-2023-48795
])
def test_no_release_with_a_known_hole(name: str, vulnerable: str, fixed: str) -> None:
    spec = requirements()[name].specifier
    assert Version(vulnerable) not in spec and Version(fixed) in spec, str(spec)


@pytest.mark.parametrize("name", [*BOUNDED, "nnunetv2"])
def test_upper_bound_below_the_next_major(name: str) -> None:
    spec = requirements()[name].specifier
    assert any(s.operator == "<" for s in spec), f"{name}{spec} has no upper bound"
    try:
        installed = Version(version(name))
    except PackageNotFoundError:  # nnunetv2 is optional
        return
    assert installed in spec, f"the tested {name} {installed} is outside {spec}"
    assert Version(f"{installed.major + 1}") not in spec
