"""The non-finite guard: a NaN/Inf batch skips the step (logged); repeated ones stop the run
with the last good checkpoint intact; a non-finite checkpoint is never written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, list_checkpoints, read_checkpoint, write_checkpoint
from training.config import CheckpointConfig, EvalConfig, LogConfig, RunConfig, SAESpec, TrainConfig
from training.synthetic import SyntheticActivations
from training.run import train
from training.trainer import NonFiniteError


class PoisonedStream(SyntheticActivations):
    """Synthetic batches, with NaN (or Inf) in the batches whose index is in `bad`."""

    def __init__(self, bad, value=float("nan"), **kw):
        super().__init__(16, 128, seed=1, n_features=48, active=3, **kw)
        self.bad, self.value = bad, value

    def batch(self, i):
        x = super().batch(i)
        if self.bad(i):
            x[3, 5] = self.value
        return x


def _config(total_batches=24, max_nonfinite=3) -> RunConfig:
    return RunConfig(
        saes=[SAESpec("topk", d_sae=64, k=3), SAESpec("batchtopk", d_sae=64, k=3)],
        train=TrainConfig(total_tokens=total_batches * 128, batch_size=128, holdout_tokens=256, dead_tokens=1000,
                          max_nonfinite=max_nonfinite),
        checkpoint=CheckpointConfig(every_tokens=4 * 128, keep_last=5),
        eval=EvalConfig(every_tokens=0),
        log=LogConfig(log_every=4, progress=False),
    )


def _finite(t: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in t.values() if v.is_floating_point())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_single_bad_batch_is_skipped_and_logged(tmp_path: Path, value: float) -> None:
    # batches 0-1 are the held-out rows; batch 2 + s is training step s + 1
    res = train(_config(), PoisonedStream(lambda i: i == 7, value), tmp_path)
    assert res.steps == 24
    for name in ("topk_k3_f64", "batchtopk_k3_f64"):
        assert res.metrics["saes"][name]["skipped_steps"] == 1
        assert res.metrics["saes"][name]["explained_variance"] > 0
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    skips = [r for r in history if r["kind"] == "skip"]
    assert {r["sae"] for r in skips} == {"topk_k3_f64", "batchtopk_k3_f64"} and {r["step"] for r in skips} == {6}
    for ckpt in list_checkpoints(tmp_path / "checkpoints"):
        assert _finite(read_checkpoint(ckpt)[1])
    for name, sae in res.saes.items():
        assert all(bool(torch.isfinite(p).all()) for p in sae.state_dict().values()), name


def test_repeated_bad_batches_stop_with_last_good_checkpoint(tmp_path: Path) -> None:
    stream = PoisonedStream(lambda i: i >= 12)  # steps 11, 12, 13 are bad -> stop after step 13
    with pytest.raises(NonFiniteError) as e:
        train(_config(max_nonfinite=3), stream, tmp_path)
    assert "3 consecutive non-finite steps" in str(e.value)
    assert "step_0000000008" in str(e.value)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_0000000004", "step_0000000008"]
    state, tensors = read_checkpoint(ckpts[-1])
    assert _finite(tensors) and state["tokens"] == 8 * 128
    assert not (tmp_path / "metrics.json").exists()
    # the stopped run resumes from its last good checkpoint once the data is fixed
    res = train(_config(), PoisonedStream(lambda i: False), tmp_path)
    assert res.resumed_from == ckpts[-1] and res.steps == 24


def test_non_finite_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="non-finite"):
        write_checkpoint(tmp_path, 3, {"x": 1}, {"sae/a/W_enc": torch.tensor([1.0, float("nan")])})
    assert list(tmp_path.iterdir()) == []
