"""Learning-rate schedule: linear warmup, constant, then linear or cosine decay.

A pure function of the step, so the schedule's whole state is the step count (which the
checkpoint stores) and a resume reproduces every learning rate exactly.
"""

from __future__ import annotations

import math

from training.config import OptimConfig


def lr_factor(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` (0-based)."""
    total_steps = max(1, total_steps)
    warm = int(round(optim.warmup_frac * total_steps))
    if step < warm:
        return (step + 1) / warm
    if optim.decay == "constant":
        return 1.0
    start = int(round(optim.decay_start_frac * total_steps))
    if step < start:
        return 1.0
    t = min(1.0, (step - start + 1) / max(1, total_steps - start))
    end = optim.final_lr_frac
    if optim.decay == "linear":
        return 1.0 - (1.0 - end) * t
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
