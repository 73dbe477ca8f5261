"""Virtual memory and Grid Engine's ``h_vmem``: why a training job with little resident memory
dies there, and how much to ask for.

On Grid Engine ``resources.mem`` becomes ``h_vmem`` (per slot; the job header divides it by
``cpus``), a cap on VIRTUAL memory: Grid Engine sets it as each process's address-space limit
and kills a job whose processes together map more. A training process maps far more address
space than it keeps resident (torch's libraries, thread stacks, allocator arenas; CUDA more),
and nnU-Net's data-augmentation workers are processes of their own, each counted in full. So a
fold with ``mem: 4gb`` fails at its first allocations ("can't allocate memory: you tried to
allocate 11059200 bytes") while it uses little RAM. Slurm and PBS count resident memory; there
``mem`` means what it says.
"""

from __future__ import annotations

import re

from hpcnn.config import Config
from hpcnn.units import format_memory

PROCESS_VMEM_MB = 4300
"""Address space one nnU-Net training process maps before it trains: VmPeak 4.16 GB (1.0 GB
resident) for a Python that has imported torch 2 and nnU-Net's trainer on CPU (measured with
/proc/self/status); a process that initialises CUDA maps more. A floor, not an estimate."""

ALLOCATION_FAILED = re.compile(
    r"can't allocate memory|Cannot allocate memory|std::bad_alloc|\bMemoryError\b|"
    r"failed to map segment|mmap failed", re.I)
"""What a process says when an allocation is refused (RLIMIT_AS, or RAM really gone)."""

GRID_ENGINE = "sge"


def gb(mb: int) -> str:
    """Megabytes as cluster.yaml takes them, rounded up to whole gigabytes."""
    return f"{-(-mb // 1024)}gb"


def processes(cfg: Config) -> int:
    """Processes of one training job: nnU-Net's trainer and its data-augmentation workers
    (``nnUNet_n_proc_DA``, as hpcnn.jobs.model sets it)."""
    return 1 + max(1, cfg.training.data_augmentation_workers or cfg.resources.cpus)


def training_vmem_mb(cfg: Config) -> int:
    """The least virtual memory a training job of this config maps, all processes together."""
    return processes(cfg) * PROCESS_VMEM_MB


def per_slot_mb(mb: int, cpus: int) -> int:
    """``h_vmem`` as the Grid Engine header asks it: the job's memory divided by its slots."""
    return (mb + cpus - 1) // max(1, cpus)


def vmem_shortfall(cfg: Config) -> str:
    """Why ``resources.mem`` is too little for a Grid Engine training job, or "" when it is
    not (or not asked: then the queue's default h_vmem applies, which hpcnn cannot see)."""
    mem = cfg.resources.mem
    if mem is None or mem >= training_vmem_mb(cfg):
        return ""
    cpus = cfg.resources.cpus
    return (f"resources.mem {gb(mem)} becomes h_vmem="
            f"{format_memory(per_slot_mb(mem, cpus), 'slurm')} per slot x {cpus} slot(s), a cap "
            f"on VIRTUAL memory; an nnU-Net training job maps at least "
            f"{gb(training_vmem_mb(cfg))} of it ({processes(cfg)} processes: "
            f"the trainer and {processes(cfg) - 1} data-augmentation worker(s), about "
            f"{PROCESS_VMEM_MB / 1024:.1f} GB each with torch loaded, more with CUDA) "
            "while it keeps far less resident")


def memory_hint(cfg: Config, dialect: str) -> str:
    """The fix for a job whose allocation was refused, for this scheduler."""
    if dialect != GRID_ENGINE:
        return ("the job ran out of memory: raise resources.mem (or lower "
                "training.data_augmentation_workers), then `hpcnn train-all-folds "
                "--resubmit-failed`")
    shortfall = vmem_shortfall(cfg)
    mem = cfg.resources.mem
    if shortfall or mem is None:
        why = shortfall or ("resources.mem is not set, so the queue's default h_vmem applied, a "
                            "cap on VIRTUAL memory, which a training process maps far more of "
                            "than it keeps resident")
        raise_to = f"to at least {gb(training_vmem_mb(cfg))} (more for a GPU job)"
    else:
        why = ("h_vmem (resources.mem divided by cpus, per slot) caps VIRTUAL memory, which a "
               "training process maps far more of than it keeps resident")
        raise_to = f"well above {gb(mem)}"
    return (f"an allocation was refused under Grid Engine's h_vmem: {why}. Raise resources.mem "
            f"{raise_to}, or lower training.data_augmentation_workers, then "
            "`hpcnn train-all-folds --resubmit-failed`")
