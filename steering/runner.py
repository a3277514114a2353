"""One forward step of a batch of sequences with a KV cache, for the batched engine.

Shape key: B rows, S positions in this forward, T cached positions, V vocabulary.

The engine drives generation itself (`steering.engine`): it prefills new rows (left padded, with
their attention mask), decodes one token per row per step, and adds rows to or drops rows from
the running batch between steps. A runner hides how one model family does that:

- `HookedRunner`: a TransformerLens HookedTransformer with its own KV cache
  (`TransformerLensKeyValueCache`: keys/values [B, T, H, Dh] per block and the attention mask
  [B, T]). TransformerLens derives positions from the attention mask (cumulative sum), so a
  row's cache can be padded on the left later (merging two batches of different lengths) without
  changing any position.
- `BridgeRunner`: an HF model under TransformerBridge, with HF's DynamicCache (keys/values
  [B, H, T, Dh] per layer) and an attention mask kept here; the Bridge derives positions from the
  mask too. Caches of other layouts (sliding window, linear attention) are not merged: the engine
  then runs new rows only once the batch has drained (rows still leave such a batch as they finish),
  and prefills the rows joining in one step as one batch (`prefills_merge`).

Only the last position's logits are computed at prefill ([B, V], not [B, S, V]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saes.hookpoints import model_device
from steering.spec import SteeringError

if TYPE_CHECKING:
    from steering.inputs import Model


class CacheMergeUnsupported(Exception):
    """This cache layout cannot take rows of another batch (the engine waits for the batch to drain)."""


def make_runner(model: Model) -> HookedRunner | BridgeRunner:
    """The runner for `model` (a HookedTransformer or a TransformerBridge)."""
    if type(model).__name__ == "TransformerBridge" or hasattr(model, "original_model"):
        return BridgeRunner(model)
    if hasattr(model, "blocks") and hasattr(model, "unembed"):
        return HookedRunner(model)
    raise SteeringError(
        f"batched generation needs a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__}"
    )


def _pad_left(t: Tensor, dim: int, n: int) -> Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _padding_columns(mask_BT: Tensor) -> int:
    """How many leading columns are padding in every row of `mask_BT`."""
    real = mask_BT.any(0).nonzero()
    return int(real[0]) if real.numel() else int(mask_BT.shape[1])


class HookedRunner:
    """Prefill / decode / merge for a HookedTransformer (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        from transformer_lens.utilities.activation_functions import apply_softcap

        self.model = model
        self.device = model_device(model)
        self.n_layers = int(model.cfg.n_layers)
        self._softcap = apply_softcap

    def _last_logits(self, resid_BSD: Tensor) -> Tensor:
        m = self.model
        if m.cfg.normalization_type is not None:
            resid_BSD = m.ln_final(resid_BSD)
        return self._softcap(m.unembed(resid_BSD), m.cfg.output_logits_soft_cap)[:, -1]

    @torch.no_grad()
    def prefill(self, tokens_BS: Tensor, mask_BS: Tensor) -> tuple[Tensor, Any]:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.device, tokens_BS.shape[0])
        resid = self.model(tokens_BS, past_kv_cache=cache, attention_mask=mask_BS, stop_at_layer=self.n_layers)
        return self._last_logits(resid[:, -1:]), cache

    @torch.no_grad()
    def decode(self, tokens_B: Tensor, cache: Any) -> Tensor:
        ones = torch.ones(tokens_B.shape[0], 1, dtype=cache.previous_attention_mask.dtype, device=self.device)
        resid = self.model(tokens_B.unsqueeze(1), past_kv_cache=cache, attention_mask=ones, stop_at_layer=self.n_layers)
        return self._last_logits(resid)

    @staticmethod
    def length(cache: Any) -> int:
        return int(cache.previous_attention_mask.shape[1])

    @staticmethod
    def can_merge(cache: Any) -> bool:
        return True

    @staticmethod
    def prefills_merge() -> bool:
        """Whether two prefills' caches merge (see `BridgeRunner.prefills_merge`): here always."""
        return True

    @staticmethod
    def select(cache: Any, rows: Tensor) -> Any:
        """The cache of rows `rows` only, with columns that are padding in every kept row dropped."""
        mask = cache.previous_attention_mask.index_select(0, rows)
        start = _padding_columns(mask)
        for e in cache.entries:
            e.past_keys = e.past_keys.index_select(0, rows)[:, start:]
            e.past_values = e.past_values.index_select(0, rows)[:, start:]
        cache.previous_attention_mask = mask[:, start:]
        return cache

    @staticmethod
    def merge(a: Any, b: Any) -> Any:
        """Rows of `a` then rows of `b`, the shorter one padded on the left."""
        Ta, Tb = int(a.previous_attention_mask.shape[1]), int(b.previous_attention_mask.shape[1])
        T = max(Ta, Tb)
        for ea, eb in zip(a.entries, b.entries):
            ea.past_keys = torch.cat([_pad_left(ea.past_keys, 1, T - Ta), _pad_left(eb.past_keys, 1, T - Tb)])
            ea.past_values = torch.cat([_pad_left(ea.past_values, 1, T - Ta), _pad_left(eb.past_values, 1, T - Tb)])
        a.previous_attention_mask = torch.cat([_pad_left(a.previous_attention_mask, 1, T - Ta),
                                               _pad_left(b.previous_attention_mask, 1, T - Tb)])
        return a


class _BridgeCache:
    """HF's cache object plus the attention mask [B, T] the Bridge needs on every call."""

    def __init__(self, hf: Any, mask_BT: Tensor) -> None:
        self.hf = hf
        self.mask_BT = mask_BT


class BridgeRunner:
    """Prefill / decode / merge for an HF model under TransformerBridge (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model_device(model)
        self._prefills_merge: bool | None = None  # not asked yet: see `prefills_merge`

    def _forward(self, tokens: Tensor, mask: Tensor, past: Any) -> tuple[Tensor, Any]:
        kw: dict[str, Any] = dict(attention_mask=mask, use_cache=True, return_type="logits_and_cache")
        if past is not None:
            kw["past_key_values"] = past
        try:
            logits, cache = self.model(tokens, logits_to_keep=1, **kw)
        except TypeError:  # an HF model without logits_to_keep
            logits, cache = self.model(tokens, **kw)
        if cache is None:
            raise SteeringError("this model returned no KV cache; batched generation needs one")
        return logits[:, -1], cache

    @torch.no_grad()
    def prefill(self, tokens_BS: Tensor, mask_BS: Tensor) -> tuple[Tensor, Any]:
        logits, hf = self._forward(tokens_BS, mask_BS, None)
        return logits, _BridgeCache(hf, mask_BS)

    @torch.no_grad()
    def decode(self, tokens_B: Tensor, cache: _BridgeCache) -> Tensor:
        ones = torch.ones(tokens_B.shape[0], 1, dtype=cache.mask_BT.dtype, device=cache.mask_BT.device)
        mask = torch.cat([cache.mask_BT, ones], dim=1)
        logits, hf = self._forward(tokens_B.unsqueeze(1), mask, cache.hf)
        cache.hf, cache.mask_BT = hf, mask
        return logits

    @staticmethod
    def length(cache: _BridgeCache) -> int:
        return int(cache.mask_BT.shape[1])

    @classmethod
    def can_merge(cls, cache: _BridgeCache) -> bool:
        try:
            cls._layers(cache)
            return True
        except CacheMergeUnsupported:
            return False

    def prefills_merge(self) -> bool:
        """Whether two prefills' caches merge, so that rows joining in one step can be prefilled in
        groups. The cache's layers are the model's (sliding window, linear attention: never), whatever
        the prompt, so a one-token prefill answers, once; the caller holds the model's lock."""
        if self._prefills_merge is None:
            one = torch.ones(1, 1, dtype=torch.long, device=self.device)
            self._prefills_merge = self.can_merge(self.prefill(one, one)[1])
        return self._prefills_merge

    @staticmethod
    def _layers(cache: _BridgeCache) -> list:
        layers = getattr(cache.hf, "layers", None)
        if layers is None or any(type(l).__name__ != "DynamicLayer" for l in layers):
            raise CacheMergeUnsupported(f"cache layers {[type(l).__name__ for l in layers or []]}")
        return layers

    @classmethod
    def select(cls, cache: _BridgeCache, rows: Tensor) -> _BridgeCache:
        """The cache of rows `rows` only. HF's own `reorder_cache` (beam search's) picks the rows in
        every layer, whatever the layer keeps per row: keys/values, a sliding window's last ones
        (Gemma-2/3, Mistral), a linear-attention or convolution layer's states (Qwen3.5, LFM2).
        Columns that are padding in every kept row are then dropped where every layer keeps all
        columns; elsewhere they stay (the mask keeps hiding them)."""
        mask = cache.mask_BT.index_select(0, rows)
        cache.hf.reorder_cache(rows)
        start = 0
        if cls.can_merge(cache):
            start = _padding_columns(mask)
            for layer in cls._layers(cache):
                if layer.keys is not None and layer.keys.numel():
                    layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        cache.mask_BT = mask[:, start:]
        return cache

    @classmethod
    def merge(cls, a: _BridgeCache, b: _BridgeCache) -> _BridgeCache:
        Ta, Tb = int(a.mask_BT.shape[1]), int(b.mask_BT.shape[1])
        T = max(Ta, Tb)
        la, lb = cls._layers(a), cls._layers(b)
        if len(la) != len(lb):
            raise CacheMergeUnsupported("caches with different numbers of layers")
        for x, y in zip(la, lb):
            x.keys = torch.cat([_pad_left(x.keys, 2, T - Ta), _pad_left(y.keys, 2, T - Tb)])
            x.values = torch.cat([_pad_left(x.values, 2, T - Ta), _pad_left(y.values, 2, T - Tb)])
        a.mask_BT = torch.cat([_pad_left(a.mask_BT, 1, T - Ta), _pad_left(b.mask_BT, 1, T - Tb)])
        return a
