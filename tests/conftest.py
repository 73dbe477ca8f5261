"""Shared fixtures. Under CI (``HPCNN_REQUIRE_TESTBED=1``) a missing test bed or nnunetv2 is a
failure, never a skip: ``need()`` below is the one place that decides."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("HPCNN_REQUIRE_TESTBED") == "1"


def need(condition: bool, what: str) -> None:
    """Skip (locally) or fail (under CI) when ``condition`` is false."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"HPCNN_REQUIRE_TESTBED=1 but {what}", pytrace=False)
    pytest.skip(what)


# ---- running the suite in several processes (README: ``pytest -n 2 --dist loadgroup``)

#: Session fixtures that train, shared by the tests of several modules: their tests run in one
#: worker, so each is made once (tiny_dataset and tiny_model are shared across workers instead:
#: models.made_once).
ONE_WORKER_FIXTURES = ("method_workspace", "cascade")
GROUPS_FILE = "xdist-groups.json"


def _group(item: pytest.Item) -> str:
    """Every test of the test bed in one group, run one after another as without xdist (they
    share one Slurm, one Grid Engine, sshd logs that tests count, and some stop slurmctld);
    otherwise a module's tests stay together, so its module fixtures are made once."""
    names = item.fixturenames
    if "testbed" in names:
        return "testbed"
    return next((f for f in ONE_WORKER_FIXTURES if f in names), item.nodeid.split("::", 1)[0])


def _groups_file(config: pytest.Config) -> Path:
    """Beside the workers' temporary folders (``pytest-N/popen-gwK``): the controller's own."""
    factory = config._tmp_path_factory  # type: ignore[attr-defined]
    base = factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER") is not None
    return (base.parent if worker else base) / GROUPS_FILE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A pytest-xdist worker writes each test's group where the controller's scheduler
    (below) reads it. pytest-xdist's own ``xdist_group`` suffix on the test id is lost
    under pytest >= 9.2, which builds ids afresh; hence this file."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    import json

    target = _groups_file(config)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_text(json.dumps({item.nodeid: _group(item) for item in items}))
    os.replace(tmp, target)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201
    """``--dist loadgroup`` with the groups of ``_group``: pytest-xdist's scheduling by
    scope (a group is one unit of work, the largest sent first), the scope read from the
    file the workers wrote when they collected. Plain ``-n 2`` (``--dist load``) gets it too:
    test-bed tests in two workers at once would stop each other's slurmctld."""
    if config.getoption("dist") not in ("load", "loadgroup"):
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    path = _groups_file(config)

    class ByGroup(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if ByGroup.groups is None:
                ByGroup.groups = json.loads(path.read_text())
            return ByGroup.groups.get(nodeid, nodeid)

    return ByGroup(config, log)


@contextlib.contextmanager
def local_queue_at(folder: Path) -> Iterator[None]:
    """HPCNN_LOCALQ_DIR set to ``folder`` for a fixture that trains through the CLI in
    subprocesses (which inherit it), and put back as it was afterwards."""
    old = os.environ.get("HPCNN_LOCALQ_DIR")
    os.environ["HPCNN_LOCALQ_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HPCNN_LOCALQ_DIR", None)
        else:
            os.environ["HPCNN_LOCALQ_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def own_local_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The local scheduler's queue of this test process, not the user's (a test that sets
    HPCNN_LOCALQ_DIR itself still wins): two workers never see each other's jobs."""
    if os.environ.get("HPCNN_LOCALQ_DIR"):
        yield
        return
    with local_queue_at(tmp_path_factory.mktemp("localq")):
        yield


@pytest.fixture
def marker_tag(testbed: dict[str, str]) -> Iterator[str]:
    """A tag for hostile names (see test_remote_connection.hostile): a name that ran as a
    command would have left ``pwned-<tag>`` in a home folder, which fails the test."""
    tag = uuid.uuid4().hex[:8]
    yield tag
    for home in (Path.home(), Path(testbed["TESTBED_HOME"])):
        assert not (home / f"pwned-{tag}").exists(), "a name was run as a command"


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """hpcnn's cache (the early-login hints, remote/early_login.py) of this test process, not
    the user's: a hint filed by one test run never begins a login in another."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def nnunet_available() -> None:
    """Use in tests that run nnU-Net itself."""
    need(importlib.util.find_spec("nnunetv2") is not None, "nnunetv2 is not installed")


@pytest.fixture(scope="session")
def sitk_available() -> None:
    need(importlib.util.find_spec("SimpleITK") is not None, "SimpleITK is not installed")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace folder as the current directory, no cluster.yaml: the local default."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.delenv("HPCNN_CONFIG", raising=False)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    return ws


@pytest.fixture
def hpcnn(capsys: pytest.CaptureFixture[str]):
    """Run the CLI in-process as a user would: returns (exit code, stdout, stderr)."""
    from hpcnn.cli.common import run_cli
    from hpcnn.cli.main import cli

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(cli, [str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


# ---- the real cluster test bed (tests/testbed/up.sh): sshd as hpcuser + Slurm with Torque wrappers

TESTBED_ENV = Path("/etc/hpcnn-testbed/testbed.env")
TESTBED_VENV = "/opt/hpcnn-venv"  # the shared nnunetv2 venv, readable by hpcuser


@pytest.fixture(scope="session")
def testbed() -> dict[str, str]:
    """The test bed's facts (TESTBED_HOST, _PORT, _USER, _KEY, _KNOWN_HOSTS, _HOME, _SSHD_LOG)."""
    need(TESTBED_ENV.is_file(), f"the test bed is not up ({TESTBED_ENV} is missing: run "
                                "tests/testbed/up.sh as root)")
    pairs = (line.split("=", 1) for line in TESTBED_ENV.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def testbed_ssh_config(testbed: dict[str, str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ssh config (used by both transports via HPCNN_SSH_CONFIG) with the Host alias
    ``testbed`` and the test bed's known_hosts for every host, so nothing of ~/.ssh is used."""
    path = tmp_path / "ssh_config"
    path.write_text(
        "Host testbed\n"
        f"  HostName {testbed['TESTBED_HOST']}\n  Port {testbed['TESTBED_PORT']}\n"
        f"  User {testbed['TESTBED_USER']}\n  IdentityFile {testbed['TESTBED_KEY']}\n"
        "  IdentitiesOnly yes\n"
        "Host *\n"
        f"  UserKnownHostsFile {testbed['TESTBED_KNOWN_HOSTS']}\n"
        "  GlobalKnownHostsFile /dev/null\n"
    )
    monkeypatch.setenv("HPCNN_SSH_CONFIG", str(path))
    return path


def testbed_ssh(testbed: dict[str, str]) -> list[str]:
    """A plain ``ssh`` to the cluster account, for fixtures that prepare or clean up."""
    return ["ssh", "-i", testbed["TESTBED_KEY"], "-p", testbed["TESTBED_PORT"],
            "-o", f"UserKnownHostsFile={testbed['TESTBED_KNOWN_HOSTS']}", "-o", "BatchMode=yes",
            f"{testbed['TESTBED_USER']}@{testbed['TESTBED_HOST']}"]


@pytest.fixture(scope="session")
def testbed_environment(testbed: dict[str, str]) -> list[str]:
    """environment.setup lines that give the cluster account nnunetv2 as a job gets it: the
    machine's shared venv (.ci/run builds it from a Python every user can run)."""
    activate = f"source {TESTBED_VENV}/bin/activate"
    probe = subprocess.run([*testbed_ssh(testbed), f"{activate} && python3 -c 'import nnunetv2'"],
                           capture_output=True, text=True, check=False)
    need(probe.returncode == 0,
         f"the cluster account cannot import nnunetv2 from {TESTBED_VENV}: "
         f"{probe.stderr.strip()[-300:]} (rebuild it with .ci/run)")
    return [activate]


@pytest.fixture
def cluster_config(testbed: dict[str, str], testbed_ssh_config: Path, tmp_path: Path,
                   testbed_environment: list[str]):
    """Factory: a cluster.yaml for the test bed, loaded like a user's. ``alias=True`` names the
    host by its ssh-config alias; False spells out host, port, user and key in cluster.yaml.
    Each config gets its own remote_dir (relative: under hpcuser's home), removed afterwards."""
    import yaml

    from hpcnn.config import Config, load_config_file

    count = iter(range(1000))

    def make(scheduler: str = "torque", ssh: str = "fabric", *, alias: bool = True,
             **cluster: object) -> Config:
        section: dict[str, object] = {"scheduler": scheduler, "ssh": ssh}
        if alias:
            section["host"] = "testbed"
        else:
            section.update(host=testbed["TESTBED_HOST"], port=int(testbed["TESTBED_PORT"]),
                           user=testbed["TESTBED_USER"], identity_file=testbed["TESTBED_KEY"])
        section["remote_dir"] = f"hpcnn-tests/{tmp_path.name}-{next(count)}"
        section.update(cluster)
        data = {
            "workspace": str(tmp_path / "ws"),
            "cluster": section,
            "resources": {"cpus": 1, "gpus": 0, "mem": "100mb", "walltime": "0:05:00"},
            "training": {"walltime_margin": "1m"},  # shorter than the walltime
            "environment": {"setup": testbed_environment},
        }
        path = tmp_path / f"cluster-{scheduler}-{ssh}.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_config_file(path)

    yield make
    subprocess.run([*testbed_ssh(testbed), f"rm -rf hpcnn-tests/{tmp_path.name}-*"],
                   capture_output=True, check=False)
