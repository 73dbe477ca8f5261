"""Issue 12 (dataset items 3, 4, 5 local half, 7): bounded imports, nothing read from outside
the source folder unless asked, private files, and ``--anonymize``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic
from test_dataset_import_bad import fails, src  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("sitk_available")

HUGE = "sizes: 65536 65536 4096"  # 128 TiB of doubles: more than any machine has
# The command's own peak resident memory: ``VmHWM`` of its process, read from /proc. Not
# ``ru_maxrss``: Linux carries that high-water mark across ``execve``, so a child of a pytest
# process that had loaded torch reports pytest's peak, not its own. ``VmHWM`` belongs to the
# address space, which ``execve`` replaces; writing 5 to ``clear_refs`` resets it once more at
# the start, so the figure counts only what the command itself held.
MEASURED = ("import sys\n"
            "from pathlib import Path\n"
            "Path('/proc/self/clear_refs').write_text('5')\n"
            "from hpcnn.cli.common import run_cli\n"
            "from hpcnn.cli.main import cli\n"
            "code = run_cli(cli, sys.argv[1:])\n"
            "peak = [ln.split()[1] for ln in Path('/proc/self/status').read_text().splitlines()\n"
            "        if ln.startswith('VmHWM:')][0]\n"
            "print('peak KiB', peak, file=sys.stderr)\n"
            "sys.exit(code)\n")


def _declare_huge(path: Path) -> None:
    header, data = path.read_bytes().split(b"\n\n", 1)
    lines = [b"type: double" if ln.startswith(b"type:") else
             HUGE.encode() if ln.startswith(b"sizes:") else ln for ln in header.split(b"\n")]
    path.write_bytes(b"\n".join(lines) + b"\n\n" + data)


def test_a_file_declaring_more_than_a_worker_may_hold_is_refused_before_it_is_read(
    src: Path, fails, workspace: Path  # noqa: F811
) -> None:
    synthetic.labelled_case(src, "h")
    _declare_huge(src / "h.nrrd")
    fails(src, "h.nrrd: declares 65536x65536x4096 double voxels: 131072.0 GiB in memory, more "
               "than the", "--max-gib 131073")
    # the option lifts the bound; the file is still refused for what it is (4 KB of data)
    fails(src, "h.nrrd: cannot read: cut short: expected 140737488355328 bytes",
          args=("--max-gib", "200000"))
    done = subprocess.run([sys.executable, "-c", MEASURED, "dataset", "import", src, "--name",
                           "Huge", "-j", "1"], capture_output=True, text=True, cwd=workspace,
                          check=False)
    assert done.returncode == 2 and "declares 65536x65536x4096" in done.stderr
    peak_kib = int(done.stderr.rsplit("peak KiB ", 1)[1])
    assert peak_kib < 1024 * 1024  # the whole command stayed under 1 GiB


def _raw_image(folder: Path, key: str) -> tuple[Path, Path]:
    """``key.nhdr`` and its raw data file ``key.raw``, written by SimpleITK."""
    case = synthetic.labelled_case(folder, key, image_ext=".nhdr")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(case.images[0])), str(case.images[0]), False)
    return case.images[0], folder / f"{key}.raw"


def test_data_files_and_links_outside_the_source_are_refused_unless_allowed(
    src: Path, fails, workspace: Path, hpcnn  # noqa: F811
) -> None:
    header, data = _raw_image(src, "d")
    secret = workspace / "secret"
    secret.mkdir()
    key = secret / "id_ed25519.raw"
    key.write_bytes(data.read_bytes())  # a file of exactly the declared size
    data.unlink()
    header.write_text(header.read_text().replace("data file: d.raw", f"data file: {key}"))
    fails(src, f"d.nhdr: its data file {key} lies outside the source folder",
          "--allow-outside-source")

    header.write_text(header.read_text().replace(f"data file: {key}", "data file: d.raw"))
    (src / "d.raw").write_bytes(key.read_bytes())
    elsewhere = workspace / "elsewhere"
    synthetic.labelled_case(elsewhere, "l")
    (src / "l.nrrd").symlink_to(elsewhere / "l.nrrd")
    (src / "l.seg.nrrd").symlink_to(elsewhere / "l.seg.nrrd")
    fails(src, f"l.nrrd: a symbolic link to {elsewhere / 'l.nrrd'}, outside the source folder")

    code, out, err = hpcnn("dataset", "import", src, "--name", "Linked", "-j", "1",
                           "--allow-outside-source")
    assert code == 0, err
    assert (workspace / "nnUNet_raw" / "Dataset501_Linked" / "imagesTr" / "l_0000.nrrd").is_file()


def test_the_dataset_is_private_whatever_the_umask(src: Path, workspace: Path) -> None:  # noqa: F811
    from test_dataset_import import run_import

    old = os.umask(0o022)
    try:
        result = run_import(workspace, src)
    finally:
        os.umask(old)
    raw = workspace / "nnUNet_raw"
    assert (workspace.stat().st_mode & 0o777) == 0o755  # the user's own folder is left alone
    folders = [raw, *(p for p in result.path.rglob("*") if p.is_dir()), result.path]
    files = [p for p in result.path.rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o600"}
    assert {p.name for p in files} >= {"cases.csv", "dataset.json", "a.nrrd", "a_0000.nrrd"}


def _with_patient_name(path: Path, name: str) -> None:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    image.SetMetaData("PatientName", name)
    image.SetMetaData("PatientID", "4711")
    sitk.WriteImage(image, str(path), True)


def test_anonymize_gives_opaque_ids_and_strips_the_headers(tmp_path: Path) -> None:
    from test_dataset_import import read, run_import

    source = tmp_path / "src"
    names = ["Doe John", "Roe Jane", "Moe Max"]
    cases = [synthetic.labelled_case(source, n) for n in names]
    for case, name in zip(cases, names, strict=True):
        _with_patient_name(case.images[0], name.replace(" ", "^"))
    plain = run_import(tmp_path / "plain", source, name="Plain")
    assert b"PatientName:=Doe^John" in (plain.path / "imagesTr" / "Doe_John_0000.nrrd").read_bytes()

    result = run_import(tmp_path / "ws", source, name="Anon", anonymize=True)
    assert sorted(c.case_id for c in result.cases) == ["case_001", "case_002", "case_003"]
    for path in result.path.rglob("*"):
        if path.is_file() and path.name != "cases.csv":
            data = path.read_bytes()
            assert not any(part.encode() in data for n in names for part in n.split()), path
            assert b"Patient" not in data and b"4711" not in data, path
    with (result.path / "cases.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["role"] == "image"]
    mapping = {r["source"]: r["output"] for r in rows}
    assert set(mapping) == {f"{n}.nrrd" for n in names}
    for case in cases:
        assert (read(result.path / mapping[case.images[0].name]) == read(case.images[0])).all()
