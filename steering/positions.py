"""Which token positions of the current forward pass an edit applies to.

Shape key: B batch, S positions in this forward, T positions so far (cache + this forward).

TransformerLens generation runs the prompt through the model once (all positions, left padded
for batches) and then, with the KV cache, one new token per forward; without the cache every
forward re-runs the whole sequence. Block hooks only see the activations, so a forward
pre-hook on the block reads what the block itself is given (`block_call_info`):
- HookedTransformer blocks: the KV-cache entry (its length is the absolute position of the first
  query) and the attention mask over all T positions [B, T] (zeros mark pad tokens);
- TransformerBridge blocks (HF modules): the HF cache's length (the offset; `_cache_length` reads
  another layer's at a hybrid's delta-net layer, which keeps none) and the 4-d attention
  mask [B, 1, S, T] of eager or SDPA attention (`check_attention` refuses flash and flex
  attention, which hand blocks other masks). A sliding-window layer's mask (Gemma-2/3, Mistral)
  hides keys beyond the window as well as pads, and past the window covers only the window
  (T < offset + S); so a sequence's pads are read where it starts: a real token attends to itself
  and to no later token, whereas a pad's row is masked entirely (eager; SDPA's masks since
  transformers 4.53) or opened entirely (older SDPA on CUDA, which a fully masked row would turn
  to NaN); a later forward whose mask does not cover the whole sequence carries that on
  (`SequenceTracker.observe`).
`SequenceTracker` keeps that per block and answers `select(positions)`.

The prompt length P (in padded positions) is, in order of precedence:
1. set explicitly (`SteeringSession.generate` does this), else
2. with the KV cache, the length of the forward that starts the sequence (offset 0), else
3. without the cache, the first forward of a run of cache-less forwards that each grow by one
   token with the same batch size (how `generate(use_past_kv_cache=False)` proceeds); any other
   cache-less forward starts a new sequence whose prompt is the whole forward.
Positions that come after the first forward of a cached sequence are taken to be real tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steering.spec import Positions, SteeringError

FULL = "full"  # sentinel: every position of this forward


class SequenceTracker:
    """Where the positions of the current forward sit in their sequence (one per block)."""

    __slots__ = ("forward_id", "B", "S", "offset", "prompt_len", "mask_BT", "explicit_prompt_len",
                 "_uncached_run", "_cache", "_forward_has_pads")

    def __init__(self) -> None:
        self.forward_id = 0
        self.B = self.S = self.offset = self.prompt_len = 0
        self.mask_BT: Tensor | None = None
        self.explicit_prompt_len: int | None = None
        self._uncached_run = False
        self._cache: dict[Any, Any] = {}
        self._forward_has_pads: bool | None = None

    # called by the block's forward pre-hook -------------------------------------------------
    def observe(self, B: int, S: int, offset: int, attention_mask: Tensor | None, uncached: bool = True) -> None:
        """A forward of S positions starting at absolute position `offset`; `attention_mask`
        [B, offset + S] (1 real, 0 pad) or None; `uncached`: no KV cache carried into it."""
        if attention_mask is None and offset > 0 and self.mask_BT is not None and \
                tuple(self.mask_BT.shape) == (B, offset):  # the sequence's pads as its start said (window layers)
            attention_mask = torch.cat([self.mask_BT, self.mask_BT.new_ones(B, S)], dim=1)
        if offset == 0:
            if self.explicit_prompt_len is not None:
                prompt_len = self.explicit_prompt_len
            elif uncached and self._uncached_run and B == self.B and S == self.S + 1:
                prompt_len = self.prompt_len  # generation without the KV cache: same sequence, one longer
            else:
                prompt_len = S
            self.prompt_len = prompt_len
        self._uncached_run = uncached and offset == 0
        self.forward_id += 1
        self.B, self.S, self.offset = B, S, offset
        self.mask_BT = attention_mask
        self._cache = {}
        self._forward_has_pads = None

    # answers to hooks -----------------------------------------------------------------------
    def forward_has_pads(self) -> bool:
        """Whether this forward's positions include pad tokens (only the sequence start can)."""
        if self._forward_has_pads is None:
            m = self.mask_BT
            if m is None or self.offset > 0:
                self._forward_has_pads = False
            else:
                self._forward_has_pads = not bool(m[:, : self.S].all())
        return self._forward_has_pads

    def select(self, positions: Positions):
        """None (no position), FULL, a (lo, hi) slice of this forward's positions (every row), or
        a 1-d int64 tensor of flat indices into the B*S rows."""
        hit = self._cache.get(positions, self)
        if hit is not self:
            return hit
        out = self._select(positions)
        self._cache[positions] = out
        return out

    def _select(self, positions: Positions):
        S, off, P = self.S, self.offset, self.prompt_len
        if positions == "all":
            lo, hi = 0, S
        elif positions == "prompt":
            lo, hi = 0, min(S, P - off)
        elif positions == "generated":
            lo, hi = max(0, P - off), S
        else:
            return self._select_indices((-1,) if positions == "last" else positions)
        if hi <= lo:
            return None
        if self.forward_has_pads():
            assert self.mask_BT is not None
            keep_BS = self.mask_BT[:, off : off + S].bool().clone()
            keep_BS[:, :lo] = False
            keep_BS[:, hi:] = False
            idx = keep_BS.reshape(-1).nonzero().squeeze(1)
            return idx if idx.numel() else None
        return FULL if (lo == 0 and hi == S) else (lo, hi)

    def _select_indices(self, indices: tuple[int, ...]):
        S, off, P, B = self.S, self.offset, self.prompt_len, self.B
        m = self.mask_BT
        if m is None:
            dev = None
            real_BS = torch.arange(off, off + S).expand(B, S)
            n_B = torch.full((B,), P, dtype=torch.int64)
            valid_BS = None
        else:
            dev = m.device
            cum_BT = m.to(torch.int64).cumsum(1)
            real_BS = cum_BT[:, off : off + S] - 1
            n_B = cum_BT[:, P - 1] if P > 0 else torch.zeros(B, dtype=torch.int64, device=dev)
            valid_BS = m[:, off : off + S].bool()
        keep_BS = torch.zeros(B, S, dtype=torch.bool, device=dev)
        for i in indices:
            target_B = n_B + i if i < 0 else torch.full_like(n_B, i)
            keep_BS |= real_BS == target_B.unsqueeze(1)
        if valid_BS is not None:
            keep_BS &= valid_BS
        idx = keep_BS.reshape(-1).nonzero().squeeze(1)
        return idx if idx.numel() else None


def block_call_info(layer_idx: int, args: tuple, kwargs: dict) -> tuple[int, int, int, Tensor | None, bool]:
    """(B, S, offset, attention mask [B, T] or None, uncached) from a block's call arguments."""
    x = args[0] if args else kwargs.get("resid_pre", kwargs.get("hidden_states"))
    if x is None:
        raise RuntimeError("steering: cannot find the block's input activations in its call arguments")
    B, S = int(x.shape[0]), int(x.shape[1])
    entry = kwargs.get("past_kv_cache_entry")
    mask = kwargs.get("attention_mask")
    # HookedTransformer; or the 2-d mask HF gives a hybrid's delta-net layer (Qwen3.5) at a prefill with pads
    if entry is not None or (mask is not None and getattr(mask, "ndim", 0) == 2):
        offset = int(entry.past_keys.size(1)) if entry is not None else 0
        return B, S, offset, mask, entry is None
    # HF block under TransformerBridge: the 4-d mask and the cache may come positionally
    cache = None
    for v in list(args[1:]) + list(kwargs.values()):
        if isinstance(v, Tensor) and v.ndim == 4 and mask is None:
            mask = v
        elif cache is None and hasattr(v, "get_seq_length"):
            cache = v
    offset = None if cache is None else _cache_length(cache, layer_idx, S)
    if isinstance(mask, Tensor) and mask.ndim == 4:
        T = int(mask.shape[-1])
        offset = T - S if offset is None else offset  # not T - S: a window layer's T stops at the window
        m_BST = mask[:, 0]
        keep_BST = m_BST if m_BST.dtype == torch.bool else m_BST > torch.finfo(m_BST.dtype).min / 2
        if offset == 0 and T == S:  # the last query's row would also hide keys beyond a window
            # a real token attends to itself and to nothing later; a pad's row is closed or all open
            keep_BT = keep_BST.diagonal(dim1=-2, dim2=-1) & ~keep_BST.triu(1).any(-1)
        elif T == offset + S:
            keep_BT = keep_BST[:, -1]
        else:  # a window's mask past the window: the tracker carries the pads on from the start
            return B, S, offset, None, offset == 0
        return B, S, offset, keep_BT.to(torch.int64), offset == 0
    offset = offset or 0
    return B, S, offset, None, offset == 0


def _cache_length(cache: Any, layer_idx: int, S: int) -> int:
    """The positions an HF cache held before this forward of S positions, read at the block's own
    layer (a sliding window's counts every position it has seen). A hybrid's delta-net layer
    (Qwen3.5) keeps no length (HF raises ValueError), so another layer's is read: an attention
    layer after this one, not reached by this forward yet, or else one before it, which this
    forward has already extended by S (HF's own fallback, the first attention layer, may be either)."""
    try:
        return int(cache.get_seq_length(layer_idx))
    except TypeError:  # a cache that keeps one length for all its layers
        return int(cache.get_seq_length())
    except ValueError:
        pass
    n = len(getattr(cache, "layers", ()))
    for i in [*range(layer_idx + 1, n), *range(layer_idx - 1, -1, -1)]:
        try:
            length = int(cache.get_seq_length(i))
        except ValueError:
            continue
        return length if i > layer_idx else length - S
    raise SteeringError(f"steering: the model's cache gives no sequence length at layer {layer_idx} nor at any other "
                        f"layer, so steered positions cannot be placed; steer without the KV cache "
                        f"(use_past_kv_cache=False)")


def check_attention(model: Any) -> None:
    """Refuse (SteeringError) a TransformerBridge whose HF model attends with other than eager or SDPA
    attention: flash and flex attention give blocks no 4-d mask to read pad tokens from."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in (None, "eager", "sdpa"):
        raise SteeringError(
            f"steering reads pad tokens from the attention mask of eager or SDPA attention; this model attends with "
            f"{impl!r}: load it with attn_implementation='eager' (saesteer.models.load_model does) or call "
            f"model.original_model.set_attn_implementation('eager')")
