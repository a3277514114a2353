"""A small-budget toy-world demo (saesteer.demo), shared by tests/test_demo.py and
tests/test_notebooks.py: a few tens of thousands of tokens and a 256-latent SAE.

    from helpers.demo_small import SMALL, small_config, small_flags
    result = run_demo(small_config(out), progress=False)

Building it twice into the same folder is cheap: every stage of the pipeline is reused.
"""

from __future__ import annotations

from pathlib import Path

SMALL = {
    "cache_tokens": 16_000,
    "train_tokens": 48_000,
    "d_sae": 256,
    "k": 8,
    "batch_size": 1024,
    "dead_tokens": 32_000,
    "ce_contexts": 8,
    "steer_samples": 2,
    "steer_test_samples": 4,
    "steer_candidates": 1,
    "steer_new_tokens": 12,
    "steer_strengths": [4.0],
    "steer_positions": "all",  # this weak 48k-token SAE needs every position to move 2 short samples
    "showcase": 3,
}


def small_config(out: str | Path):
    from saesteer.demo import DemoConfig

    return DemoConfig(out=str(out), **SMALL)


def small_flags() -> list[str]:
    """The same settings as `saesteer demo` flags."""
    flags: list[str] = []
    for k, v in SMALL.items():
        flags += ["--" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return flags
