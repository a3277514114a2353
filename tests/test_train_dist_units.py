"""In-process checks of the data-parallel pieces (no torchrun): the global BatchTopK cut over
ranks (two threads standing in for two ranks, with the real `_DistBatchGroup` over a tiny
thread-backed collective), the shard split, and the reader over a subset of shards."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from helpers.fake_cache import make_fake_cache
from saes.topk_select import batch_top_entries
from training.collectives import _DistBatchGroup
from training.reader import CacheReader, rank_shards


class _ThreadColl:
    """The collectives `_DistBatchGroup` uses, between threads (one per rank)."""

    def __init__(self, rank: int, world: int, board: dict, barrier: threading.Barrier) -> None:
        self.rank, self.world_size, self.device = rank, world, torch.device("cpu")
        self.board, self.barrier = board, barrier

    def _exchange(self, value):
        self.barrier.wait()
        self.board[self.rank] = value
        self.barrier.wait()
        out = [self.board[r] for r in range(self.world_size)]
        self.barrier.wait()
        return out

    def global_rows(self, n: int) -> int:
        return sum(self._exchange(n))

    def min_(self, t: torch.Tensor) -> torch.Tensor:
        t.copy_(torch.stack(self._exchange(t.clone())).amin(0))
        return t

    def _all_gather_padded(self, x: torch.Tensor):
        pieces = self._exchange(x.clone())
        return pieces, [p.shape[0] for p in pieces]


def _run_ranks(world: int, fn) -> dict:
    """fn(rank, group) in one thread per rank, each with a `_DistBatchGroup` over the threads;
    returns {rank: result} and re-raises nothing silently (any error fails the test)."""
    board, barrier = {}, threading.Barrier(world)
    out: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(r: int) -> None:
        try:
            out[r] = fn(r, _DistBatchGroup(_ThreadColl(r, world, board, barrier)))  # type: ignore[arg-type]
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return out


def _per_rank_selection(pre_BF: torch.Tensor, k: int, world: int):
    B = pre_BF.shape[0] // world
    out = _run_ranks(world, lambda r, group: batch_top_entries(pre_BF[r * B:(r + 1) * B].contiguous(), k, group))
    return out, B


@pytest.mark.parametrize("B,F,k,world,seed", [(64, 512, 8, 2, 0), (512, 2048, 16, 2, 1), (96, 256, 4, 3, 2),
                                              (40, 64, 32, 2, 3)])
def test_global_batchtopk_over_ranks_equals_one_process(B: int, F: int, k: int, world: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pre_BF = torch.randn(B, F, generator=g)
    pre_BF[: B // world] += 0.5  # rank 0's rows win more often: the ranks' shares of the cut differ
    vals, rows, cols = batch_top_entries(pre_BF, k)  # one process, the whole batch
    out, b = _per_rank_selection(pre_BF, k, world)
    got_rows = torch.cat([out[r][1] + r * b for r in range(world)])
    got_cols = torch.cat([out[r][2] for r in range(world)])
    got_vals = torch.cat([out[r][0] for r in range(world)])
    assert torch.equal(got_rows, rows) and torch.equal(got_cols, cols) and torch.equal(got_vals, vals)
    counts = [out[r][0].numel() for r in range(world)]
    assert sum(counts) == vals.numel() and len(set(counts)) > 1  # not k*B/W each: a global cut


def test_per_rank_selection_would_differ() -> None:
    """The check above can fail: selecting k*B_local on each rank is another selection."""
    g = torch.Generator().manual_seed(0)
    pre_BF = torch.randn(64, 512, generator=g)
    pre_BF[:32] += 0.5
    _, rows, _ = batch_top_entries(pre_BF, 8)
    local = torch.cat([batch_top_entries(pre_BF[:32], 8)[1], batch_top_entries(pre_BF[32:], 8)[1] + 32])
    assert not torch.equal(local, rows)


def test_rank_shards_split_disjoint_covering_balanced() -> None:
    rows = [500, 100, 400, 300, 300, 200, 50]
    parts = [rank_shards(rows, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(len(rows)))
    loads = [sum(rows[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(rows)
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        rank_shards([1, 2, 3], 0, 4)


def test_reader_over_a_subset_of_shards(tmp_path) -> None:
    cache = make_fake_cache(tmp_path / "c", shard_rows=[5, 3, 7, 4], d_in=4)
    r = CacheReader(cache.path, batch_size=4, seed=0, shards=[1, 3])
    got = torch.cat([b.acts for b in r])
    want = torch.cat([cache.acts["blocks.0.hook_resid_post"][5:8], cache.acts["blocks.0.hook_resid_post"][15:19]])
    assert got.shape == want.shape
    assert torch.equal(got[got[:, 0].argsort()], want[want[:, 0].argsort()])
    with pytest.raises(ValueError, match="distinct indices"):
        CacheReader(cache.path, batch_size=4, shards=[1, 1])


@pytest.mark.parametrize("native_kernels", [False, True])
def test_step_selection_of_every_kernel_honours_the_global_batch(native_kernels: bool) -> None:
    """`saes.fast_step._select` (the selection of the fast / fast_native step methods) given the
    ranks' group: each rank's entries are its rows of one process's selection."""
    from saes import create_sae
    from saes import native
    from saes.fast_step import _select

    if native_kernels and not native.available():
        pytest.skip("no C++ compiler for the native kernels")
    B, F, k, world = 128, 1024, 8, 2
    sae = create_sae("batchtopk", 16, F, k=k)
    g = torch.Generator().manual_seed(7)
    pre_BF = torch.randn(B, F, generator=g)
    pre_BF[: B // world] += 0.3
    whole = _select(sae, pre_BF, torch.float32, None, native_kernels)  # type: ignore[arg-type]
    b = B // world
    saes = [copy.deepcopy(sae) for _ in range(world)]  # one SAE per rank, as in training

    def select(r: int, group):
        return _select(saes[r], pre_BF[r * b:(r + 1) * b].contiguous(), torch.float32, None,  # type: ignore[arg-type]
                       native_kernels, group=group)

    out = _run_ranks(world, select)
    rows = torch.cat([out[r].rows_N + r * b for r in range(world)])  # type: ignore[attr-defined]
    idx = torch.cat([out[r].idx_N for r in range(world)])  # type: ignore[attr-defined]
    assert torch.equal(rows, whole.rows_N) and torch.equal(idx, whole.idx_N)
