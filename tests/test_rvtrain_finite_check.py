"""The cache's finite check of a shard (training.writer.refuse_non_finite): one float32 sum first,
the rows looked at only when it is not finite. Large but finite activations (a bf16 or fp32 cache
keeps fp32's range) can make that sum overflow although no value is Inf: such a shard is kept."""

from __future__ import annotations

import pytest
import torch

from training.writer import CacheNonFiniteError, ShardBuffer, refuse_non_finite


def _buffer(dtype: torch.dtype, rows: torch.Tensor) -> ShardBuffer:
    buf = ShardBuffer({"blocks.0.hook_resid_post": rows.shape[1]}, dtype, contexts=1, L=rows.shape[0], pin=False)
    buf.acts["blocks.0.hook_resid_post"][:] = rows.to(dtype)
    buf.rows = rows.shape[0]
    return buf


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_finite_values_whose_sum_overflows_float32_are_kept(dtype) -> None:
    rows = torch.full((4, 8), 2e38)  # each finite in bf16 and fp32; their sum is not
    assert not bool(torch.isfinite(rows.to(dtype).sum(dtype=torch.float32)))
    refuse_non_finite(_buffer(dtype, rows), "shard_00000.safetensors")  # no refusal


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_value_is_refused_counting_its_rows(bad) -> None:
    rows = torch.randn(6, 8)
    rows[2, 3] = rows[4, 0] = bad
    with pytest.raises(CacheNonFiniteError, match=r"2 of the 6 rows of shard_00000.safetensors hold Inf or NaN"):
        refuse_non_finite(_buffer(torch.float16, rows), "shard_00000.safetensors")
