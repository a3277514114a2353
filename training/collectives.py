"""The points where data-parallel training must talk across processes, in one small class.

A single process uses `Collectives` as it is: every operation is the identity.
`DistCollectives` implements them with torch.distributed (gloo on CPU, NCCL on CUDA; started by
`training.distributed.init_from_env` under torchrun). The trainer calls only these methods:

    average_gradients_(params, weight)  gradients summed over ranks after scaling by `weight`
                                (local rows / global rows: the global batch mean), before
                                clipping and the optimiser (what DDP's all-reduce does)
    sum_(t)                     all-reduce sum in place: latents' firing counts (dead-latent
                                counters), BatchTopK threshold statistics, logged losses
    min_(t)                     all-reduce min in place: the BatchTopK cutoff
    all_finite(flag)            every rank agrees to skip a non-finite step
    all_true(flag)              every rank has a batch (a rank that runs out stops everyone)
    global_rows(n)              rows of the global batch (sum over ranks)
    gather_rows(x)              every rank's rows, concatenated in rank order (the held-out set)
    broadcast_(t)               rank 0's value everywhere (initial weights, b_dec)
    broadcast_int(v)            rank 0's integer everywhere (which checkpoint to resume)
    batch_group()               the `saes.topk_select.BatchGroup` BatchTopK selects over
    is_writer                   only this rank writes checkpoints, SAE folders and logs

Shape key: N entries, W ranks, B rows, D d_in.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from saes.topk_select import BatchGroup, take_top


class Collectives:
    """Single-process collectives (the identity). `DistCollectives` is the torch.distributed one."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def average_gradients_(self, params: Iterable[torch.nn.Parameter], weight: float | None = None) -> None:
        """Average `.grad` of `params` over ranks, in place (`weight`: this rank's share)."""

    def sum_(self, t: Tensor) -> Tensor:
        return t

    def min_(self, t: Tensor) -> Tensor:
        return t

    def all_finite(self, flag: bool) -> bool:
        return flag

    def all_true(self, flag: bool) -> bool:
        return flag

    def global_rows(self, n_local: int) -> int:
        return n_local

    def gather_rows(self, x_BD: Tensor) -> Tensor:
        return x_BD

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        return t

    def broadcast_int(self, value: int, src: int = 0) -> int:
        return value

    def batch_group(self) -> BatchGroup | None:
        return None

    def barrier(self) -> None:
        pass


class DistCollectives(Collectives):
    """Collectives over the default torch.distributed process group (already initialised).

    `device`: where small control tensors live (the rank's CUDA device under NCCL, else CPU)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistCollectives needs an initialised process group; use training.distributed.init_from_env")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(device)

    def _comm(self, t: Tensor) -> Tensor:
        """`t` on the communication device (NCCL reduces CUDA tensors only)."""
        return t if t.device == self.device else t.to(self.device)

    def _reduce_(self, t: Tensor, op) -> Tensor:
        c = self._comm(t)
        if c.dtype == torch.bool:
            c = c.to(torch.int32)
        self._dist.all_reduce(c, op=op)
        if c is not t:
            t.copy_(c)
        return t

    def average_gradients_(self, params: Iterable[torch.nn.Parameter], weight: float | None = None) -> None:
        w = 1.0 / self.world_size if weight is None else float(weight)
        works = []
        for p in params:
            if p.grad is None:
                # a rank without a gradient would leave the others waiting: give it zeros
                p.grad = torch.zeros_like(p)
            g = p.grad
            if g.layout != torch.strided:
                p.grad = g = g.to_dense()
            if w != 1.0:
                g.mul_(w)
            works.append(self._dist.all_reduce(g, op=self._dist.ReduceOp.SUM, async_op=True))
        for work in works:
            work.wait()

    def sum_(self, t: Tensor) -> Tensor:
        return self._reduce_(t, self._dist.ReduceOp.SUM)

    def min_(self, t: Tensor) -> Tensor:
        return self._reduce_(t, self._dist.ReduceOp.MIN)

    def all_finite(self, flag: bool) -> bool:
        return self.all_true(flag)

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MIN)
        return bool(t.item())

    def global_rows(self, n_local: int) -> int:
        t = torch.tensor([int(n_local)], dtype=torch.int64, device=self.device)
        self._dist.all_reduce(t)
        return int(t.item())

    def _all_gather_padded(self, x_N: Tensor) -> tuple[list[Tensor], list[int]]:
        """Every rank's 1-D or 2-D `x` (first dims may differ): (pieces in rank order, sizes)."""
        n = torch.tensor([x_N.shape[0]], dtype=torch.int64, device=self.device)
        sizes_t = [torch.zeros_like(n) for _ in range(self.world_size)]
        self._dist.all_gather(sizes_t, n)
        sizes = [int(s.item()) for s in sizes_t]
        m = max(sizes)
        pad = torch.zeros((m,) + tuple(x_N.shape[1:]), dtype=x_N.dtype, device=self.device)
        pad[: x_N.shape[0]] = x_N
        outs = [torch.empty_like(pad) for _ in range(self.world_size)]
        self._dist.all_gather(outs, pad)
        return [o[:s] for o, s in zip(outs, sizes)], sizes

    def gather_rows(self, x_BD: Tensor) -> Tensor:
        pieces, _ = self._all_gather_padded(x_BD.contiguous())
        return torch.cat(pieces).to(x_BD.device)

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        c = self._comm(t)
        self._dist.broadcast(c, src=src)
        if c is not t:
            t.copy_(c)
        return t

    def broadcast_int(self, value: int, src: int = 0) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        self._dist.broadcast(t, src=src)
        return int(t.item())

    def batch_group(self) -> BatchGroup:
        return _DistBatchGroup(self)

    def barrier(self) -> None:
        self._dist.barrier()


class _DistBatchGroup(BatchGroup):
    """BatchTopK over the global batch: the cut is taken over all ranks' candidates.

    `reduce_floor`: a MIN all-reduce of the ranks' floors (each a value its own share k*B_local
    of its entries reach): the global cut is at least the smallest (the ranks together hold
    k*B_global entries >= it), so each rank's candidates are its entries >= it. `take_top`: the
    same bound once more on the candidates (a MIN all-reduce of each rank's (k*B_local)-th
    largest; it also guards a step method that collected more), then an all-gather of the rest,
    over which every rank computes the same global cut (`saes.topk_select.take_top`, ties towards
    lower ranks) and keeps its own slice. Exact: the same entries as one process selecting over
    the concatenated batch."""

    def __init__(self, coll: DistCollectives) -> None:
        self.coll = coll
        self._rows = (0, 0)  # (local, global) rows of the batch being selected (one group per step)

    def global_rows(self, n_local: int) -> int:
        # one all-reduce per selection, however often a step method asks (a fallback path may
        # ask again on one rank only; the ranks' sequences of collectives must stay the same)
        if self._rows[1] == 0 or self._rows[0] != n_local:
            self._rows = (n_local, self.coll.global_rows(n_local))
        return self._rows[1]

    def reduce_floor(self, floor: float) -> float:
        t = torch.tensor([floor], dtype=torch.float64, device=self.coll.device)
        return float(self.coll.min_(t)[0])

    def take_top(self, vals_N: Tensor, total: int) -> Tensor:
        coll = self.coll
        n_local, n_global = self._rows
        share = (total * n_local) // n_global if n_global else 0  # this rank's k * B_local
        vals_f = vals_N.float()
        pos_N = vals_f > 0
        n_pos = int(pos_N.sum())
        if 0 < share <= n_pos:
            local_floor = vals_f[pos_N].kthvalue(n_pos - share + 1).values.reshape(1)
        else:
            local_floor = torch.full((1,), -torch.inf, device=vals_N.device)
        floor = coll.min_(local_floor.clone())[0]
        kept_K = (pos_N & (vals_f >= floor.to(vals_f.device))).nonzero().squeeze(1)
        pieces, sizes = coll._all_gather_padded(vals_f[kept_K].to(coll.device))
        mask_all = take_top(torch.cat(pieces), total)
        start = sum(sizes[: coll.rank])
        mine_K = mask_all[start : start + sizes[coll.rank]].to(vals_N.device)
        out_N = torch.zeros_like(pos_N)
        out_N[kept_K[mine_K]] = True
        return out_N
