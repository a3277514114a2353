"""The device of the `gpu`-marked tests, and their sizes.

On a machine with CUDA they run there at realistic sizes. Without one they are skipped, unless
SAESTEER_GPU_DRY=1 (what `benchmarks/gpu_check.sh --dry` sets): then the same tests run on the
CPU at tiny sizes, so that the GPU checks cannot rot on machines without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# cuBLAS is deterministic only with a fixed workspace; set before the first CUDA matmul.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

DRY_ENV = "SAESTEER_GPU_DRY"


def dry_run() -> bool:
    return os.environ.get(DRY_ENV) == "1"


def gpu_device() -> torch.device:
    """CUDA when there is one; the CPU in a dry run; else the test is skipped."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in these comparisons
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    if dry_run():
        return torch.device("cpu")
    pytest.skip(f"needs a CUDA device (or {DRY_ENV}=1 to run this check on the CPU)")


@dataclass(frozen=True)
class Sizes:
    d_in: int
    d_sae: int
    k: int
    batch: int
    curve_steps: int  # steps of the bf16 learning-curve comparison


def sizes(device: torch.device) -> Sizes:
    if device.type == "cuda":
        return Sizes(d_in=768, d_sae=16384, k=32, batch=4096, curve_steps=300)
    return Sizes(d_in=16, d_sae=128, k=4, batch=64, curve_steps=25)
