"""Gather what bench/gpu_check.py needs on a GPU machine that has PyTorch but no nnU-Net and no
network, as wheels in one file small enough to travel with the working tree (64 MiB in all).

Run here (where pip reaches the package index):
    python bench/gpu_wheels.py [--dest .gpu-wheels] [--python 3.12] [--present FILE]

What is missing there: the requirements of nnunetv2 and of hpcnn, followed through this
environment's installed metadata (the versions tested here), stopping at every package the GPU
machine already has (``--present``: a ``pip list --format=freeze`` from it; by default the
package list of the lent machines' image, PRESENT below), less what the check never imports
(SKIPPED). hpcnn itself is built from this tree. The wheels are stored uncompressed inside one
``wheels.tar.xz``: xz packs SimpleITK's libraries far tighter than a wheel's zip does, and
SimpleITK alone is 53 MB as a wheel. On the GPU machine::

    mkdir -p /tmp/w && tar -xJf .gpu-wheels/wheels.tar.xz -C /tmp/w &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl

The folder is git-ignored; name it in the device call's ``carry``. Prints every wheel's size,
the archive's, the working tree's, and the total against the 64 MiB that may travel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 64 * 2**20
ROOTS = ["nnunetv2", "SimpleITK", "click", "jinja2", "pydantic", "pyyaml", "rich", "filelock",
         "platformdirs"]
"""nnunetv2 and hpcnn's own requirements (pyproject.toml) that the local scheduler uses."""
SKIPPED = {
    "argparse": "a PyPI copy of the standard library's module",
    "imagecodecs": "only for compressed TIFF images; the check's images are NRRD",
    "fabric": "SSH transport: the check runs on the local scheduler",
    "paramiko": "SSH transport: the check runs on the local scheduler",
    "invoke": "SSH transport: the check runs on the local scheduler",
}
PRESENT = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio
attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp"""
"""The lent GPU machines' image (/work/.library/device/KINDS.md, read 2026-11-17): Python 3.12."""
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def missing(present: set[str], python: str) -> dict[str, str]:
    """{name: version here} of every requirement the GPU machine lacks, followed from ROOTS."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "extra": "",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "implementation_name": "cpython", "os_name": "posix"}
    found: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or name in present or name in SKIPPED:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            sys.exit(f"{name} is not installed here: install hpcnn with the nnunet extra first")
        found[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return found


def download(wanted: dict[str, str], python: str, dest: Path) -> None:
    """Binary wheels for the GPU machine's Python; a package with none (pure-Python sdists,
    e.g. nnunetv2's own helpers) is built into a wheel here."""
    for name, version in sorted(wanted.items()):
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", python, "--implementation", "cp", *platforms, "-d", str(dest),
             f"{name}=={version}"], capture_output=True, text=True, check=False)
        if got.returncode != 0:
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(dest), f"{name}=={version}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
                    str(ROOT)], check=True)


def pack(wheels: list[Path], archive: Path) -> None:
    """The wheels stored uncompressed (still valid wheels: RECORD hashes the files, not the
    zip), in one tar compressed with xz."""
    # xz's default preset: -9 packs SimpleITK only a little tighter at several times the time.
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive, "w:xz", preset=6) as tar:
        for wheel in wheels:
            stored = Path(tmp, wheel.name)
            with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(stored, "w",
                                                                zipfile.ZIP_STORED) as out:
                for info in src.infolist():
                    out.writestr(info, src.read(info), compress_type=zipfile.ZIP_STORED)
            tar.add(stored, arcname=wheel.name)


def working_tree_bytes() -> int:
    """What travels besides: tracked and untracked files that git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names
               if n and (ROOT / n.decode()).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=ROOT / ".gpu-wheels")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (X.Y)")
    parser.add_argument("--present", type=Path,
                        help="`pip list --format=freeze` of the GPU machine (default: PRESENT)")
    args = parser.parse_args()
    text = args.present.read_text() if args.present else PRESENT
    present = {canonicalize_name(w.split("==")[0]) for w in text.split() if w.strip()}
    wanted = missing(present, args.python)
    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download(wanted, args.python, Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
            print(f"  {wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
        archive = args.dest / "wheels.tar.xz"
        pack(wheels, archive)
        plain = sum(w.stat().st_size for w in wheels)
    (args.dest / "MANIFEST.txt").write_text("".join(f"{w.name}\n" for w in wheels))
    for name, why in SKIPPED.items():
        print(f"  left out {name}: {why}")
    tree, packed = working_tree_bytes(), archive.stat().st_size
    total = tree + packed
    print(f"{len(wheels)} wheels: {plain / 2**20:.1f} MiB as wheels, {packed / 2**20:.1f} MiB "
          f"in {archive.name}; working tree {tree / 2**20:.1f} MiB; travels {total / 2**20:.1f} "
          f"MiB of 64 MiB: {'PASS' if total <= BUDGET else 'MISS'}")


if __name__ == "__main__":
    main()
