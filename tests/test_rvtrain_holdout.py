"""Held-out rows kept apart on every pass (`train(..., holdout=...)`, used by `saesteer demo`).

The demo trained 400k tokens on a 150k-row cache, its held-out rows the first rows of that cache's
stream: from the second pass on they were trained on, so the README's "held-out" dead and EV figures
were training-set figures. Its held-out rows now come from a cache of their own (the toy world's
validation text) that the training stream never reads (tested on the small demo in tests/test_demo.py).
"""

from __future__ import annotations

import json

import torch

from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig
from training.initialize import estimate_activation_scale
from training.run import train

B, D = 64, 16


class Counted:
    """Endless batches cycling over `rows` (several passes), counting the rows it yields."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows, self.yielded = rows, 0

    def __iter__(self):
        while True:
            for x in self.rows.split(B):
                self.yielded += x.shape[0]
                yield x


def _config(total: int) -> RunConfig:
    return RunConfig(saes=[SAESpec("topk", d_sae=32, k=2)],
                     train=TrainConfig(total_tokens=total, batch_size=B, holdout_tokens=2 * B, dead_tokens=1000),
                     checkpoint=CheckpointConfig(every_tokens=0), eval=EvalConfig(every_tokens=0),
                     log=LogConfig(log_every=4, progress=False))


def test_held_out_rows_given_apart_are_never_drawn_from_the_training_data(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    data = Counted(torch.randn(4 * B, D, generator=g))
    held = 5.0 * torch.randn(3 * B, D, generator=g)  # another scale: the run's scale tells where it came from
    res = train(_config(12 * B), data, tmp_path, holdout=held.split(B))  # 3 passes over the data
    assert data.yielded == 12 * B  # every row drawn from the data is trained on: none held out of it
    prov = json.loads((tmp_path / "saes/topk_k2_f32/saesteer.json").read_text())
    assert prov["activation_scale"] == estimate_activation_scale(held[:2 * B])
    assert res.metrics["saes"]["topk_k2_f32"]["eval_rows"] == 2 * B
