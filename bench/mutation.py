"""Mutation scores of the rules that tell users what happened to their jobs.

Runs mutmut (``pip install 'mutmut>=3.8,<4'``) with ``[tool.mutmut]`` of pyproject.toml in a
scratch copy of the tree (``mutants/`` never lands in the working tree, and two people can run
it at once), on one scope at a time with the fast tests only, then edits every entry of every
dialect's state table one at a time (mutmut mutates code, not tables) and runs the dialect
tests against each edit. Prints killed/total per scope, the survivors, and exits 1 when a scope
is under its goal.

    python bench/mutation.py                       # every scope (about 15 min on 2 cores)
    python bench/mutation.py decide pbspro         # some scopes
    python bench/mutation.py tables                # only the state-table edits
    python bench/mutation.py --jobs 1 --keep /tmp/m slurm

The same file is the pytest plugin that applies one table edit (``-p mutation``, the edit in
``HPCNN_TABLE_EDIT``), so that the edits need no copy of the sources.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = "hpcnn.jobs.engine."
PBS = "hpcnn.schedulers.batch."
SCOPES: dict[str, tuple[list[str], float]] = {
    # decide and what it relies on: the markers' parsing, the start they belong to, the clock
    "decide": ([ENGINE + f"x_{name}__mutmut_*" for name in (
        "decide", "_decide", "_ended", "this_start", "_when", "_ran_to_walltime",
        "_scheduler_says", "_parse_markers", "_kv")], 0.90),
    # each dialect's parse path: status and submit answers (detection and header filters have
    # their own tests, outside the fast selection)
    "batch": ([PBS + "x_hms_seconds*", PBS + "x_qstat_failure*", PBS + "x__as_asked*",
               PBS + "xǁPbsDialectǁparse_*", PBS + "xǁPbsDialectǁ_finished*"], 0.90),
    "torque": (["hpcnn.schedulers.torque.x_*", "hpcnn.schedulers.torque.xǁTorqueDialectǁ*"],
               0.90),
    "pbspro": (["hpcnn.schedulers.pbspro.x_*", "hpcnn.schedulers.pbspro.xǁPbsProDialectǁ*"],
               0.90),
    "slurm": (["hpcnn.schedulers.slurm.x_exit_code*",
               *(f"hpcnn.schedulers.slurm.xǁSlurmDialectǁ{name}*"
                 for name in ("parse_status", "parse_submit", "status_command"))], 0.90),
    "units": (["hpcnn.units.*"], 0.80),
    "config": (["hpcnn.config.*"], 0.80),
}
TABLES_GOAL = 1.0
DETECTED = {"killed", "timeout", "caught by type check"}
DIALECT_TESTS = ["tests/test_scheduler_answers.py", "tests/test_dialect_torque.py",
                 "tests/test_dialect_pbspro.py", "tests/test_dialect_slurm.py"]


def scratch_copy(pyproject: dict, target: Path) -> None:
    """The sources, the fast tests and their fixtures: what ``[tool.mutmut]`` names."""
    conf = pyproject["tool"]["mutmut"]
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for path in [*conf["source_paths"], *conf.get("also_copy", []), "pyproject.toml"]:
        src = REPO / path
        if src.is_dir():
            shutil.copytree(src, target / path, dirs_exist_ok=True, ignore=ignore)
        else:
            shutil.copy2(src, target / path)
    tests = target / "tests"
    shutil.copytree(REPO / "tests" / "fixtures", tests / "fixtures", dirs_exist_ok=True,
                    ignore=ignore)
    for name in ["conftest.py", "captures.py",
                 *(Path(t).name for t in conf["pytest_add_cli_args_test_selection"])]:
        shutil.copy2(REPO / "tests" / name, tests / name)


def mutmut_scores(work: Path, scopes: list[str], jobs: int) -> dict[str, tuple[int, list[str]]]:
    """{scope: (mutants, survivors)} from ``mutmut run`` limited to each scope's names."""
    mutmut = [sys.executable, "-m", "mutmut"]
    patterns = [p for scope in scopes for p in SCOPES[scope][0]]
    run = subprocess.run([*mutmut, "run", "--max-children", str(jobs), *patterns], cwd=work,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         check=False)
    if run.returncode != 0:
        sys.exit(f"mutmut run failed (exit {run.returncode}): {run.stderr[-2000:]}")
    listed = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work,
                            capture_output=True, text=True, check=True).stdout
    status = dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", listed, re.M))
    scores = {}
    for scope in scopes:
        names = [n for n in status
                 if any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), n)
                        for p in SCOPES[scope][0])]
        scores[scope] = (len(names), sorted(n for n in names if status[n] not in DETECTED))
    return scores


def table_edits() -> list[dict[str, str]]:
    """One edit per table entry and plausible wrong value: the entry read as unknown, or as a
    neighbouring state (the issue's ``OUT_OF_MEMORY → completed``); a finished letter dropped."""
    sys.path.insert(0, str(REPO))
    from hpcnn.schedulers import pbspro, slurm, torque
    from hpcnn.schedulers.base import JobState

    edits = []
    tables = [("hpcnn.schedulers.slurm", "_STATES", slurm._STATES),
              ("hpcnn.schedulers.torque", "TorqueDialect.active_states",
               torque.TorqueDialect.active_states),
              ("hpcnn.schedulers.pbspro", "PbsProDialect.active_states",
               pbspro.PbsProDialect.active_states)]
    for module, name, table in tables:
        for key, value in table.items():
            for wrong in {JobState.UNKNOWN, JobState.COMPLETED
                          if value != JobState.COMPLETED else JobState.FAILED} - {value}:
                edits.append({"module": module, "table": name, "key": key, "value": wrong.value})
    for module, cls in (("hpcnn.schedulers.torque", torque.TorqueDialect),
                        ("hpcnn.schedulers.pbspro", pbspro.PbsProDialect)):
        for letter in sorted(cls.finished_states):
            edits.append({"module": module, "table": f"{cls.__name__}.finished_states",
                          "key": letter, "value": ""})
    return edits


def pytest_configure(config: object) -> None:
    """Apply the table edit in ``HPCNN_TABLE_EDIT`` (run as ``pytest -p mutation``)."""
    edit = json.loads(os.environ.get("HPCNN_TABLE_EDIT", "null") or "null")
    if not edit:
        return
    import importlib

    from hpcnn.schedulers.base import JobState

    owner: object = importlib.import_module(edit["module"])
    *path, attr = edit["table"].split(".")
    for part in path:
        owner = getattr(owner, part)
    table = getattr(owner, attr)
    if isinstance(table, frozenset):
        setattr(owner, attr, table - {edit["key"]})
    else:
        setattr(owner, attr, {**table, edit["key"]: JobState(edit["value"])})


def tables_score() -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), str(REPO)])}

    def passes(edit: dict[str, str] | None) -> bool:
        res = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "mutation",
                              "-p", "no:cacheprovider", *DIALECT_TESTS], cwd=REPO,
                             env={**env, "HPCNN_TABLE_EDIT": json.dumps(edit)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return res.returncode == 0

    if not passes(None):  # else every edit would count as caught
        sys.exit(f"the dialect tests fail without any table edit: {' '.join(DIALECT_TESTS)}")
    edits = table_edits()
    survivors = [f"{edit['table']}[{edit['key']}] -> {edit['value'] or 'removed'}"
                 for edit in edits if passes(edit)]
    return len(edits), survivors


def main() -> int:
    import tomllib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scopes", nargs="*", choices=[*SCOPES, "tables"],
                        help="default: every scope and the table edits")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--keep", type=Path, help="scratch folder to use and keep "
                        "(mutmut reuses its results there)")
    args = parser.parse_args()
    chosen = args.scopes or [*SCOPES, "tables"]
    results: dict[str, tuple[int, list[str], float]] = {}
    code_scopes = [s for s in chosen if s in SCOPES]
    if code_scopes:
        pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
        work = args.keep or Path(tempfile.mkdtemp(prefix="hpcnn-mutation-"))
        try:
            scratch_copy(pyproject, work)
            for scope, (total, survivors) in mutmut_scores(work, code_scopes, args.jobs).items():
                results[scope] = (total, survivors, SCOPES[scope][1])
        finally:
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
    if "tables" in chosen:
        total, survivors = tables_score()
        results["tables"] = (total, survivors, TABLES_GOAL)
    below = False
    for scope, (total, survivors, goal) in results.items():
        score = (total - len(survivors)) / total if total else 0.0
        below |= score < goal
        print(f"{scope:8} {total - len(survivors):4}/{total:<4} killed  {score:6.1%}"
              f"  (goal {goal:.0%})")
        for name in survivors:
            print(f"           survived: {name}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
