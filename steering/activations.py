"""Activations at one hook over a set of prompts, real tokens only (no pads, no BOS).

Shape key: B prompts in a batch, S positions, D width at the hook, F d_sae.
Used by the feature search (mean latent activation per prompt set) and the
difference-of-means baseline (mean activation per prompt set).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saes.bos import prompt_tokens
from saes.hookpoints import check_hook, opt_in_hooks
from steering.spec import SteeringError

if TYPE_CHECKING:
    from saes.base import SAE
    from steering.inputs import Model


def real_token_mask(model: Model, tokens_BS: Tensor, prepend_bos: bool | None = None) -> Tensor:
    """True at real, non-BOS tokens of a left-padded batch."""
    from transformer_lens.utilities import get_attention_mask

    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    mask_BS = get_attention_mask(model.tokenizer, tokens_BS, bos, padding_side="left").bool()
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    if bos and bos_id is not None:
        # the first real token of each row is the BOS
        first_B = (~mask_BS).sum(1)
        mask_BS[torch.arange(tokens_BS.shape[0], device=tokens_BS.device), first_B.clamp_max(tokens_BS.shape[1] - 1)] = False
    return mask_BS


@torch.no_grad()
def iter_hook_activations(
    model: Model, hook_name: str, prompts: Sequence[str], *, batch_size: int = 16, prepend_bos: bool | None = None
) -> Iterator[Tensor]:
    """Yield [n_real, D] activations at `hook_name` for each batch of prompts (heads flattened)."""
    check_hook(model, hook_name, "activation collection")
    if isinstance(prompts, str) or not prompts:
        raise SteeringError("prompts must be a non-empty list of strings")
    if batch_size < 1:
        raise SteeringError(f"batch_size must be positive, got {batch_size}")
    layer = _layer_of(hook_name)
    n_layers = model.cfg.n_layers
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        kw = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
        tokens_BS = prompt_tokens(model, chunk, prepend_bos, padding_side="left")  # one BOS (saes.bos)
        stop = layer + 1 if layer is not None and layer + 1 < n_layers else None
        with opt_in_hooks(model, hook_name, "activation collection"):
            _, cache = model.run_with_cache(
                tokens_BS, names_filter=lambda n: n == hook_name, stop_at_layer=stop, padding_side="left", **kw
            )
        acts = cache[hook_name]
        acts_BSD = acts.reshape(acts.shape[0], acts.shape[1], -1)
        keep_BS = real_token_mask(model, tokens_BS, prepend_bos).to(acts_BSD.device)
        yield acts_BSD[keep_BS]


def _layer_of(hook_name: str) -> int | None:
    if hook_name.startswith("blocks."):
        try:
            return int(hook_name.split(".")[1])
        except (IndexError, ValueError):
            return None
    return None


@torch.no_grad()
def mean_hook_activation(
    model: Model, hook_name: str, prompts: Sequence[str], *, batch_size: int = 16, prepend_bos: bool | None = None
) -> tuple[Tensor, int]:
    """Mean activation [D] over all real tokens of `prompts`, and the token count."""
    total: Tensor | None = None
    n = 0
    for acts_ND in iter_hook_activations(model, hook_name, prompts, batch_size=batch_size, prepend_bos=prepend_bos):
        s = acts_ND.double().sum(0)
        total = s if total is None else total + s
        n += acts_ND.shape[0]
    if total is None or n == 0:
        raise SteeringError("the prompts hold no real tokens to average over")
    return (total / n).float(), n


@torch.no_grad()
def mean_latent_activation(
    model: Model, sae: SAE, prompts: Sequence[str], *, batch_size: int = 16, prepend_bos: bool | None = None,
    bar: Any = None,
) -> tuple[Tensor, Tensor, int]:
    """Mean activation [F] and firing rate [F] of every latent over the real tokens of `prompts`
    (with the BOS the SAE was trained with unless `prepend_bos` says otherwise). `bar`: a progress
    bar (tqdm) moved on by each batch's prompts, for a caller whose bar spans several calls."""
    from steering.generation import sae_prepend_bos
    from steering.resolve import sae_hook_name

    hook = sae_hook_name(sae)
    if prepend_bos is None:
        prepend_bos = sae_prepend_bos(sae)
    total = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    fires = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    n = 0
    batches = iter_hook_activations(model, hook, prompts, batch_size=batch_size, prepend_bos=prepend_bos)
    for acts_ND, start in zip(batches, range(0, len(prompts), batch_size)):  # batches first: it checks `prompts`
        sparse = sae.encode_sparse(acts_ND.to(sae.device))
        total.index_add_(0, sparse.indices_N, sparse.values_N.double())
        fires.index_add_(0, sparse.indices_N, (sparse.values_N != 0).double())
        n += acts_ND.shape[0]
        if bar is not None:
            bar.update(min(batch_size, len(prompts) - start))
    if n == 0:
        raise SteeringError("the prompts hold no real tokens to average over")
    return (total / n).float(), (fires / n).float(), n
