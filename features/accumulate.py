"""The streaming pass: per-latent statistics and examples from batches of SAE activations, in
memory that does not grow with the number of tokens.

Shape key: B rows in the batch, N active (row, latent) entries, F d_sae, K top examples,
Q quantile reservoir size, P negative pool size, W window width, H histogram bins,
C contexts in the batch, L context length, A latents touched.

State (all tensors, saved and restored for resume; sizes depend on F, K, Q, P, W, H, M only):
- counts and moments: fires, sum, sum of squares, max, first/last position, firings on BOS;
- histogram [F, H] over [0, U_f) with U_f the smallest power of two above the latent's max so
  far; when a larger value arrives U_f doubles and pairs of bins merge, which is exact, so the
  final histogram does not depend on the order of the rows;
- top K examples per latent (value, row, context, position, window activations), merged per
  batch: ties go to the earlier row;
- a uniform reservoir of Q firing events per latent (Algorithm L: after the fill, the index of
  the next accepted firing is a geometric skip; every draw is a counter-based hash of (seed,
  latent, acceptance number), so the sample does not depend on batching or on resumes);
- a pool of P random rows (again Algorithm R) and, for each, the set of latents active anywhere
  in its window, from which each latent's non-activating contexts are drawn at the end;
- with every reservoir event, the set of latents active on that token (at most `coact_kmax`) and
  their activations: a uniform sample of each latent's co-firing, from which P(g fires | f fires),
  co-activation neighbours and the Pearson correlation of activations are estimated at the end
  (exact for latents that fire at most Q times). Exact
  pairwise counts were dropped: B*k^2 scattered increments per batch into an [F, F] (or
  [F, anchors]) table cost several times the SAE encoder itself.
Token ids are not kept: windows are re-read from the cache when the store is written.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from features.config import BuildConfig
from features.hashing import uniform
from features.source import ContextBatch
from saes.sparse import SparseActs

_ACCEPT_BLOCK = 8  # reservoir acceptances computed per step of the Algorithm L loop
NEG_TAG = 1 << 40  # the `b` argument of the hash for pool decisions (no latent id is this large)
PERM_TAG = (1 << 40) + 1
_BIG = torch.iinfo(torch.int64).max


class BatchEntries(NamedTuple):
    """The positive entries of one batch, ordered by (latent, row)."""

    f_N: Tensor
    row_N: Tensor  # local row within the batch
    v_N: Tensor  # float32
    cnt_F: Tensor  # entries per latent
    start_F: Tensor  # first entry of each latent


class FeatureAccumulator:
    """Accumulates the pass over batches of whole contexts (see the module doc)."""

    def __init__(
        self,
        d_sae: int,
        cfg: BuildConfig,
        context_length: int,
        *,
        bos_id: int | None = None,
    ) -> None:
        self.F = F = int(d_sae)
        self.cfg = cfg
        self.L = int(context_length)
        self.bos_id = bos_id
        K, Q, P, W, H = cfg.top_k, cfg.n_quantile, cfg.negative_pool, cfg.window, cfg.hist_bins
        i64, f32 = torch.int64, torch.float32
        s: dict[str, Tensor] = {}
        s["n_rows"] = torch.zeros((), dtype=i64)
        s["n_fires"] = torch.zeros(F, dtype=i64)
        s["sum"] = torch.zeros(F, dtype=torch.float64)
        s["sumsq"] = torch.zeros(F, dtype=torch.float64)
        s["max"] = torch.zeros(F, dtype=f32)
        s["min_pos"] = torch.full((F,), _BIG, dtype=i64)
        s["max_pos"] = torch.full((F,), -1, dtype=i64)
        s["bos_fires"] = torch.zeros(F, dtype=i64)
        s["hist"] = torch.zeros(F, H, dtype=i64)
        s["hist_top"] = torch.zeros(F, dtype=f32)  # U_f (0: nothing seen yet)
        s["top_val"] = torch.full((F, K), float("-inf"), dtype=f32)
        s["top_row"] = torch.full((F, K), -1, dtype=i64)
        s["top_seq"] = torch.full((F, K), -1, dtype=i64)
        s["top_pos"] = torch.full((F, K), -1, dtype=i64)
        s["top_win"] = torch.zeros(F, K, W, dtype=f32)
        s["res_val"] = torch.full((F, Q), float("-inf"), dtype=f32)
        s["res_row"] = torch.full((F, Q), -1, dtype=i64)
        s["res_seq"] = torch.full((F, Q), -1, dtype=i64)
        s["res_pos"] = torch.full((F, Q), -1, dtype=i64)
        s["res_win"] = torch.zeros(F, Q, W, dtype=f32)
        # Algorithm L: the 1-based index of the next firing event to accept, and its weight W
        s["res_next"], s["res_w"] = self._reservoir_init(F, Q, cfg.seed)
        s["res_m"] = torch.zeros(F, dtype=i64)  # acceptances after the fill
        s["neg_row"] = torch.full((P,), -1, dtype=i64)
        s["neg_seq"] = torch.full((P,), -1, dtype=i64)
        s["neg_pos"] = torch.full((P,), -1, dtype=i64)
        s["neg_mask"] = torch.zeros(P, F, dtype=torch.bool)
        # for every reservoir event: the other latents active on that token (co-activation sample)
        s["res_lat"] = torch.full((F, Q, cfg.coact_kmax), -1, dtype=torch.int32)
        s["res_latv"] = torch.zeros(F, Q, cfg.coact_kmax, dtype=f32)  # ... and their activations there
        self.s = s

    @staticmethod
    def _reservoir_init(F: int, Q: int, seed: int) -> tuple[Tensor, Tensor]:
        if Q == 0:
            return torch.zeros(F, dtype=torch.int64), torch.zeros(F, dtype=torch.float64)
        lat = torch.arange(F)
        w = torch.exp(torch.log(uniform(seed, lat, 0)) / Q)
        return Q + _skip(uniform(seed, lat, 1), w) + 1, w

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.s)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(set(self.s) - set(state))
        if missing:
            raise ValueError(f"pass state lacks {', '.join(missing)}")
        for k, v in self.s.items():
            if state[k].shape != v.shape or state[k].dtype != v.dtype:
                raise ValueError(f"pass state {k} has shape {tuple(state[k].shape)} {state[k].dtype}, expected {tuple(v.shape)} {v.dtype}")
        self.s = {k: state[k].clone() for k in self.s}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.s.values())

    @property
    def n_rows(self) -> int:
        return int(self.s["n_rows"])

    # -- one batch ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, acts: SparseActs, batch: ContextBatch) -> None:
        s, cfg, F = self.s, self.cfg, self.F
        B = batch.acts_BD.shape[0]
        if acts.n_rows != B:
            raise ValueError(f"activations have {acts.n_rows} rows, the batch {B}")
        row_N = acts.row_ids()
        v_N = acts.values_N.float()
        f_N = acts.indices_N
        pos = v_N > 0
        if not bool(pos.all()):
            row_N, v_N, f_N = row_N[pos], v_N[pos], f_N[pos]
        # row-major order (CSR) is kept for the window sets and co-activation samples
        cnt_B = torch.bincount(row_N, minlength=B)
        rstart_B = torch.cumsum(cnt_B, 0) - cnt_B
        order = torch.argsort(f_N * B + row_N)
        cnt_F = torch.bincount(f_N, minlength=F)
        # (index_select: much faster than advanced indexing for these large 1-D gathers)
        e = BatchEntries(f_N.index_select(0, order), row_N.index_select(0, order), v_N.index_select(0, order), cnt_F,
                         torch.cumsum(cnt_F, 0) - cnt_F)
        ctx = _BatchContext(batch, e, self.L, cfg.window_before, cfg.window)

        fires_before_F = s["n_fires"].clone()
        self._stats(e, batch)
        self._histogram(e)
        self._top_k(e, ctx, batch)
        if cfg.n_quantile:
            self._reservoir(e, ctx, batch, fires_before_F)
        if cfg.negative_pool:
            self._negatives(ctx, batch, f_N, cnt_B, rstart_B)
        s["n_rows"] += B

    def _stats(self, e: BatchEntries, batch: ContextBatch) -> None:
        s = self.s
        s["n_fires"] += e.cnt_F
        s["sum"].index_add_(0, e.f_N, e.v_N.double())
        s["sumsq"].index_add_(0, e.f_N, e.v_N.double().square())
        s["max"].scatter_reduce_(0, e.f_N, e.v_N, "amax")
        pos_N = batch.positions_B.index_select(0, e.row_N)
        s["min_pos"].scatter_reduce_(0, e.f_N, pos_N, "amin")
        s["max_pos"].scatter_reduce_(0, e.f_N, pos_N, "amax")
        if self.bos_id is not None:
            on_bos = batch.token_ids_B.index_select(0, e.row_N) == self.bos_id
            s["bos_fires"] += torch.bincount(e.f_N[on_bos], minlength=self.F)

    def _histogram(self, e: BatchEntries) -> None:
        s, H = self.s, self.cfg.hist_bins
        if e.f_N.numel() == 0:
            return
        bmax_F = torch.zeros(self.F).scatter_reduce_(0, e.f_N, e.v_N, "amax")
        top_F = s["hist_top"]
        grow = bmax_F >= top_F
        grow &= bmax_F > 0
        if bool(grow.any()):
            ids = grow.nonzero(as_tuple=True)[0]
            _, exp = torch.frexp(bmax_F[ids])  # bmax = m * 2^exp, m in [0.5, 1): 2^exp > bmax
            new_top = torch.ldexp(torch.ones_like(bmax_F[ids]), exp)
            old_top = top_F[ids]
            had = old_top > 0
            if bool(had.any()):
                hid, old, new = ids[had], old_top[had], new_top[had]
                _, e_old = torch.frexp(old)
                _, e_new = torch.frexp(new)
                shift = (e_new - e_old).clamp(max=H.bit_length())  # doublings; >= log2(H) puts all in bin 0
                for d in shift.unique().tolist():
                    lat = hid[shift == d]
                    g = min(1 << d, H)
                    merged = s["hist"][lat].view(-1, H // g, g).sum(-1)
                    s["hist"][lat] = torch.nn.functional.pad(merged, (0, H - H // g))
            top_F[ids] = new_top
        bucket = (e.v_N / top_F.index_select(0, e.f_N) * H).floor().to(torch.int64).clamp_(0, H - 1)
        s["hist"].view(-1).index_add_(0, e.f_N * H + bucket, torch.ones_like(bucket))

    def _top_k(self, e: BatchEntries, ctx: "_BatchContext", batch: ContextBatch) -> None:
        """Merge the batch into each latent's top K. The buffer is unordered: a new entry takes
        the slot of the entry it evicts, so nothing else moves (finalize sorts it). The kept set
        is the K largest by (value desc, row asc): ties go to the earlier row."""
        s, K = self.s, self.cfg.top_k
        if e.f_N.numel() == 0:
            return
        thr_F = s["top_val"].amin(1)
        cand = (e.v_N > thr_F.index_select(0, e.f_N)).nonzero(as_tuple=True)[0]
        if cand.numel() == 0:
            return
        fs, vs, rs = e.f_N[cand], e.v_N[cand], e.row_N[cand]
        # order by (latent, value desc, row asc): one stable sort of a combined key on the
        # (latent, row)-ordered entries (positive float32 bits order like the values)
        key = fs * (1 << 31) + ((1 << 31) - 1 - vs.view(torch.int32).to(torch.int64))
        o = torch.sort(key, stable=True).indices
        fs, vs, rs = fs[o], vs[o], rs[o]
        cnt = torch.bincount(fs, minlength=self.F)
        rank = torch.arange(fs.numel()) - (torch.cumsum(cnt, 0) - cnt)[fs]
        keep = rank < K
        fs, vs, rs, rank = fs[keep], vs[keep], rs[keep], rank[keep]
        aff = torch.unique(fs)
        a_pos = torch.searchsorted(aff, fs)
        A = aff.numel()
        cand_val = torch.full((A, K), float("-inf"))
        cand_row = torch.full((A, K), _BIG, dtype=torch.int64)
        cand_val[a_pos, rank] = vs
        cand_row[a_pos, rank] = batch.first_row + rs
        buf_row = s["top_row"][aff]
        comb_val = torch.cat([s["top_val"][aff], cand_val], 1)  # [A, 2K]
        comb_row = torch.cat([torch.where(buf_row >= 0, buf_row, _BIG), cand_row], 1)
        o = torch.sort(comb_row, dim=1, stable=True).indices
        o = o.gather(1, torch.sort(comb_val.gather(1, o), dim=1, descending=True, stable=True).indices)
        in_top = torch.zeros(A, 2 * K, dtype=torch.bool).scatter_(1, o[:, :K], True)
        evicted = ~in_top[:, :K]  # buffer slots to refill
        fresh = in_top[:, K:] & (cand_val > float("-inf"))  # candidates that made it
        ea, ek = evicted.nonzero(as_tuple=True)  # row-major: per latent, the i-th evicted slot ...
        fa, fk = fresh.nonzero(as_tuple=True)  # ... receives the i-th fresh candidate
        # (a latent with an empty slot evicts it: -inf never beats a candidate)
        n_per_a = torch.bincount(fa, minlength=A)
        e_rank = torch.arange(ea.numel()) - (torch.cumsum(torch.bincount(ea, minlength=A), 0) - torch.bincount(ea, minlength=A))[ea]
        take = e_rank < n_per_a[ea]
        ea, ek = ea[take], ek[take]
        f = aff[fa]
        r_loc = cand_row[fa, fk] - batch.first_row
        s["top_val"][f, ek] = cand_val[fa, fk]
        s["top_row"][f, ek] = batch.first_row + r_loc
        s["top_seq"][f, ek] = batch.seq_index_B[r_loc]
        s["top_pos"][f, ek] = batch.positions_B[r_loc]
        s["top_win"][f, ek] = ctx.windows(r_loc, f)

    def _reservoir(self, e: BatchEntries, ctx: "_BatchContext", batch: ContextBatch, fires_before_F: Tensor) -> None:
        """Algorithm L per latent: the first Q firings fill the reservoir; afterwards the index of
        the next accepted firing is drawn as a geometric skip, so only accepted events cost
        anything. Every draw is a hash of (seed, latent, acceptance number)."""
        s, Q, N = self.s, self.cfg.n_quantile, e.f_N.numel()
        if N == 0:
            return
        filling = (fires_before_F < Q).index_select(0, e.f_N).nonzero(as_tuple=True)[0]  # latents with free slots
        t = fires_before_F[e.f_N[filling]] + (filling - e.start_F[e.f_N[filling]]) + 1  # 1-based event index
        fill = filling[t <= Q]
        lats, slots, ents = [e.f_N[fill]], [t[t <= Q] - 1], [fill]
        end_F = fires_before_F + e.cnt_F
        nxt, w, m = s["res_next"], s["res_w"], s["res_m"]
        hit = (nxt <= end_F).nonzero(as_tuple=True)[0]
        seed, M = self.cfg.seed, _ACCEPT_BLOCK
        while hit.numel():
            # the next M acceptances of every latent in `hit` at once; the same sequence as one at a
            # time: w after acceptance j is w * prod_{i<=j} u_i^(1/Q) (cumprod keeps the order), and
            # acceptance j+1 comes skip_j + 1 firings after acceptance j
            mm = m[hit][:, None] + torch.arange(M)
            lat2 = hit[:, None]
            w_seq = w[hit][:, None] * torch.cumprod(torch.exp(torch.log(uniform(seed, lat2, 3 + 3 * mm)) / Q), dim=1)
            step = _skip(uniform(seed, lat2, 4 + 3 * mm), w_seq) + 1
            pos = nxt[hit][:, None] + torch.cumsum(step, 1) - step  # firing index of acceptance j
            ok = pos <= end_F[hit][:, None]  # a prefix of each row
            r, j = ok.nonzero(as_tuple=True)
            lats.append(hit[r])
            slot_u = uniform(seed, hit[r], 2 + 3 * mm[r, j])
            slots.append((slot_u * Q).floor().to(torch.int64).clamp_(max=Q - 1))
            ents.append(e.start_F[hit[r]] + (pos[r, j] - fires_before_F[hit[r]] - 1))
            c = ok.sum(1)
            hh, cc = hit[c > 0], c[c > 0]
            rows = (c > 0).nonzero(as_tuple=True)[0]
            w[hh] = w_seq[rows, cc - 1]
            nxt[hh] = pos[rows, cc - 1] + step[rows, cc - 1]
            m[hh] += cc
            hit = hh[nxt[hh] <= end_F[hh]]
        lat, slot, ent = torch.cat(lats), torch.cat(slots), torch.cat(ents)
        if lat.numel() == 0:
            return
        # several acceptances of this batch may hit one slot: the latest event wins
        key = lat * Q + slot
        last = torch.full((self.F * Q,), -1, dtype=torch.int64).scatter_reduce_(0, key, ent, "amax")
        keep = last[key] == ent
        f, j, ent = lat[keep], slot[keep], ent[keep]
        r = e.row_N[ent]
        s["res_val"][f, j] = e.v_N[ent]
        s["res_row"][f, j] = batch.first_row + r
        s["res_seq"][f, j] = batch.seq_index_B[r]
        s["res_pos"][f, j] = batch.positions_B[r]
        s["res_win"][f, j] = ctx.windows(r, f)
        lat_nK, val_nK = ctx.row_latents(r, s["res_lat"].shape[2])
        s["res_lat"][f, j] = lat_nK.to(torch.int32)
        s["res_latv"][f, j] = val_nK

    def _negatives(self, ctx: "_BatchContext", batch: ContextBatch, f_csr: Tensor, cnt_B: Tensor, rstart_B: Tensor) -> None:
        s, P = self.s, self.cfg.negative_pool
        B = batch.acts_BD.shape[0]
        rows = torch.arange(B)
        grow = batch.first_row + rows
        t = grow + 1
        u = uniform(self.cfg.seed, grow, NEG_TAG)
        j = torch.where(t <= P, t - 1, (u * t.double()).floor().to(torch.int64))
        acc = j < P
        if not bool(acc.any()):
            return
        r, j = rows[acc], j[acc]
        last = torch.full((P,), -1, dtype=torch.int64).scatter_reduce_(0, j, r, "amax")
        keep = last[j] == r
        r, j = r[keep], j[keep]
        s["neg_row"][j] = batch.first_row + r
        s["neg_seq"][j] = batch.seq_index_B[r]
        s["neg_pos"][j] = batch.positions_B[r]
        s["neg_mask"][j] = False
        wr_NW = ctx.window_rows(r)  # [n, W], -1 outside
        n_idx, w_idx = (wr_NW >= 0).nonzero(as_tuple=True)
        wrow = wr_NW[n_idx, w_idx]
        counts = cnt_B[wrow]
        if int(counts.sum()) == 0:
            return
        seg = torch.repeat_interleave(torch.arange(wrow.numel()), counts)
        within = torch.arange(seg.numel()) - (torch.cumsum(counts, 0) - counts)[seg]
        ent = rstart_B[wrow][seg] + within
        s["neg_mask"][j[n_idx][seg], f_csr[ent]] = True

def _skip(u: Tensor, w: Tensor) -> Tensor:
    """Algorithm L's geometric skip floor(log(u) / log(1 - w)), capped to stay inside int64."""
    sk = torch.floor(torch.log(u) / torch.log1p(-w.clamp(max=1 - 1e-16)))
    # capped at 2^56 so that a cumulative sum of a block of skips stays inside int64
    return torch.nan_to_num(sk, nan=0.0, posinf=float(1 << 56)).clamp(0, float(1 << 56)).to(torch.int64)


class _BatchContext:
    """Looks up a latent's activation at every token of a row's window, within one batch."""

    def __init__(self, batch: ContextBatch, e: BatchEntries, L: int, before: int, W: int) -> None:
        self.batch, self.L, self.before, self.W = batch, L, before, W
        B = batch.acts_BD.shape[0]
        self.B = B
        self.rowmap_CL = torch.full((batch.n_contexts, L), -1, dtype=torch.int64)
        self.c_B = batch.seq_index_B - batch.first_context
        self.rowmap_CL[self.c_B, batch.positions_B] = torch.arange(B)
        self.keys_N = e.f_N * B + e.row_N  # sorted ascending (entries are in (latent, row) order)
        self.v_N = e.v_N

    def window_rows(self, r_n: Tensor) -> Tensor:
        """Batch rows [n, W] of the window around each row (-1: outside the context or no row)."""
        q_nW = self.batch.positions_B[r_n][:, None] - self.before + torch.arange(self.W)[None, :]
        valid = (q_nW >= 0) & (q_nW < self.L)
        wr = self.rowmap_CL[self.c_B[r_n][:, None], q_nW.clamp(0, self.L - 1)]
        return torch.where(valid, wr, torch.full_like(wr, -1))

    def windows(self, r_n: Tensor, f_n: Tensor) -> Tensor:
        """Activation of latent f_n[i] at every token of row r_n[i]'s window: float32 [n, W]."""
        wr = self.window_rows(r_n)
        out = torch.zeros(wr.shape, dtype=torch.float32)
        if self.keys_N.numel() == 0:
            return out
        keys = f_n[:, None] * self.B + wr.clamp(min=0)
        idx = torch.searchsorted(self.keys_N, keys).clamp_(max=self.keys_N.numel() - 1)
        hit = (wr >= 0) & (self.keys_N[idx] == keys)
        return torch.where(hit, self.v_N[idx], out)

    def row_latents(self, r_n: Tensor, kmax: int) -> tuple[Tensor, Tensor]:
        """(the latents active on each row [n, kmax], -1 padded, the kmax strongest if more (equal
        activations: the lower id); their activations there [n, kmax], 0 in padding).

        Only the entries of the distinct rows asked for are ordered, in one sort, into a [rows,
        kmax] table that is gathered: memory the batch's entries plus rows*kmax, however dense a
        row is (a [n, densest row] gather was 20+ GB at d_sae 24576 when a high-norm token fired
        thousands of latents), and time that falls with the reservoir's acceptances."""
        rows_U, u_n = torch.unique(r_n, return_inverse=True)
        U = rows_U.numel()
        # the (latent, row)-ordered entries of those rows: ascending latent ids within each row
        want_B = torch.zeros(self.B, dtype=torch.bool)
        want_B[rows_U] = True
        row_N = self.keys_N % self.B
        sel = want_B.index_select(0, row_N).nonzero(as_tuple=True)[0]
        row_M = torch.searchsorted(rows_U, row_N.index_select(0, sel))  # 0..U-1
        f_M, v_M = (self.keys_N.index_select(0, sel) // self.B), self.v_N.index_select(0, sel)
        # per row, strongest first, equal activations by ascending id: one stable sort of (row,
        # activation desc) on the id-ordered entries (positive float32 bits order like the values)
        o = torch.sort(row_M * (1 << 31) + ((1 << 31) - 1 - v_M.view(torch.int32).to(torch.int64)), stable=True).indices
        cnt_U = torch.bincount(row_M, minlength=U)
        rank = torch.arange(o.numel()) - (torch.cumsum(cnt_U, 0) - cnt_U).index_select(0, row_M.index_select(0, o))
        kept = o[rank < kmax]
        # the kept ones grouped by row in id order (canonical: ascending ids, padding last)
        kept = kept.sort().values
        kept = kept.index_select(0, torch.sort(row_M.index_select(0, kept), stable=True).indices)
        row_k = row_M.index_select(0, kept)
        cnt_k = torch.bincount(row_k, minlength=U)
        col = torch.arange(kept.numel()) - (torch.cumsum(cnt_k, 0) - cnt_k).index_select(0, row_k)
        f_UK = torch.full((U, kmax), -1, dtype=torch.int64)
        v_UK = torch.zeros(U, kmax, dtype=torch.float32)
        f_UK[row_k, col] = f_M.index_select(0, kept)
        v_UK[row_k, col] = v_M.index_select(0, kept)
        return f_UK.index_select(0, u_n), v_UK.index_select(0, u_n)
