"""Data-parallel training under torchrun: start the process group from torchrun's environment.

    torchrun --nproc-per-node 4 -m saesteer train --cache caches/x --out runs/x --device cuda ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
`init_from_env` reads them (env:// rendezvous), picks the backend (NCCL when the run's device is
CUDA, gloo otherwise), gives each rank its own GPU (cuda:LOCAL_RANK) and, on CPU, an equal share
of the cores, and returns a `DistCollectives` for the trainer. Without those variables (a plain
`saesteer train`) it returns None and nothing is initialised.

See docs/training.md, "Distributed training", for what is reduced how.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from training.collectives import DistCollectives

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistSetup(NamedTuple):
    collectives: DistCollectives
    device: str  # the device this rank trains on
    backend: str
    local_rank: int


def launched_by_torchrun() -> bool:
    """True when the torchrun environment describes more than one process."""
    return all(v in os.environ for v in ENV_VARS) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str, local_rank: int) -> str:
    """The device of one rank: 'cuda' becomes cuda:LOCAL_RANK; an explicit index is refused
    (every rank would share one GPU); CPU stays CPU."""
    d = torch.device(device)
    if d.type == "cuda":
        if d.index is not None:
            raise ValueError(f"train.device {device!r} names one GPU, but torchrun starts several ranks; pass "
                             f"--device cuda (rank r trains on cuda:LOCAL_RANK) and choose the GPUs with "
                             f"CUDA_VISIBLE_DEVICES")
        return f"cuda:{local_rank}"
    return device


def choose_backend(device: str) -> str:
    """NCCL for CUDA devices (when torch has it), gloo otherwise."""
    if torch.device(device).type == "cuda" and torch.distributed.is_nccl_available():
        return "nccl"
    return "gloo"


def cpu_threads_per_rank() -> int:
    """The cores of this machine shared out among the ranks on it (at least 1)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world))


def init_from_env(device: str, num_threads: int = 0, timeout_s: float = 1800.0) -> DistSetup | None:
    """Initialise torch.distributed from torchrun's variables; None when not under torchrun.

    num_threads: CPU threads of this rank (0: the machine's cores divided by the local ranks)."""
    if not launched_by_torchrun():
        return None
    import datetime

    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    dev = rank_device(device, local_rank)
    backend = choose_backend(dev)
    if torch.device(dev).type == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {os.environ['RANK']} wants {dev}, but this machine has "
                               f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} visible GPU(s); "
                               f"lower --nproc-per-node or use --device cpu")
        torch.cuda.set_device(torch.device(dev))
    torch.set_num_threads(num_threads or cpu_threads_per_rank())
    if not dist.is_initialized():
        kw = {"device_id": torch.device(dev)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s), **kw)
    comm_device = dev if backend == "nccl" else "cpu"
    return DistSetup(DistCollectives(comm_device), dev, backend, local_rank)


def shutdown() -> None:
    """Destroy the process group if one was started (end of a torchrun rank)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
