"""Activations at one hook over a set of prompts, real tokens only (no pads, no BOS).

Shape key: B prompts in a batch, S positions, D width at the hook, F d_sae.
Used by the feature search (mean latent activation per prompt set) and the
difference-of-means baseline (mean activation per prompt set).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from saes.hookpoints import check_hook, opt_in_hooks
from steering.generation import positions_follow_mask, tokenize_prompts
from steering.spec import SteeringError, SteeringWarning

if TYPE_CHECKING:
    from saes.base import SAE
    from steering.inputs import Model


class PaddedPrompts(NamedTuple):
    tokens_BS: Tensor  # each prompt's own tokens (one BOS: saes.bos), left-padded
    mask_BS: Tensor  # 1 at each row's own tokens, 0 at its pads
    keep_BS: Tensor  # True at the tokens whose activations count: the row's own, less the BOS put first
    lengths: list[int]  # each row's own length (mask_BS's row sums, kept on the host)


def padded_prompts(model: Model, prompts: Sequence[str], prepend_bos: bool | None = None) -> PaddedPrompts:
    """The prompts as one left-padded batch, each tokenized alone (`steering.generation.tokenize_prompts`,
    cut to the model's context as `to_tokens` cuts): its length is its own, never read back off the
    padded tokens (GPT-2's pad is its <|endoftext|>, which a prompt may start with).
    The BOS `saes.bos.prompt_tokens` puts first (prepended, written out as the one BOS, or the start of an
    empty prompt) is not one of the prompt's tokens; an <|endoftext|> the text starts with where no
    BOS is asked for is."""
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    wanted = bool(model.cfg.default_prepend_bos) if prepend_bos is None else bool(prepend_bos)
    tokens_BS, lengths = tokenize_prompts(model, list(prompts), prepend_bos, truncate=True)
    S = tokens_BS.shape[1]
    mask_BS = torch.zeros(tokens_BS.shape, dtype=torch.long, device=tokens_BS.device)
    keep_BS = torch.zeros(tokens_BS.shape, dtype=torch.bool, device=tokens_BS.device)
    for b, (p, n) in enumerate(zip(prompts, lengths)):
        mask_BS[b, S - n:] = 1
        starts_bos = (wanted or p == "") and bos_id is not None and n > 0 and int(tokens_BS[b, S - n]) == bos_id
        keep_BS[b, S - n + int(starts_bos):] = True
    return PaddedPrompts(tokens_BS, mask_BS, keep_BS, lengths)


@torch.no_grad()
def iter_hook_activations(
    model: Model, hook_name: str, prompts: Sequence[str], *, batch_size: int = 16, prepend_bos: bool | None = None
) -> Iterator[Tensor]:
    """Yield [n_real, D] activations at `hook_name` for each batch of prompts (heads flattened):
    each prompt's as it gives them alone, whatever else shares its batch (an explicit attention
    mask: pads are not attended, and the model derives each row's positions from it)."""
    check_hook(model, hook_name, "activation collection")
    if isinstance(prompts, str) or not prompts:
        raise SteeringError("prompts must be a non-empty list of strings")
    if batch_size < 1:
        raise SteeringError(f"batch_size must be positive, got {batch_size}")
    layer = _layer_of(hook_name)
    n_layers = model.cfg.n_layers
    stop = layer + 1 if layer is not None and layer + 1 < n_layers else None
    # a model that would number a padded row's positions from its first pad runs each prompt alone
    alone = not positions_follow_mask(model)
    cut: list[int] = []  # the full length of each prompt cut to the context
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        parts = [[p] for p in chunk] if alone else [chunk]
        yield torch.cat([_real_token_activations(model, hook_name, part, prepend_bos, stop, cut) for part in parts])
    if cut:
        _warn_cut(model, len(prompts), cut)


def _real_token_activations(model: Model, hook_name: str, prompts: list[str], prepend_bos: bool | None,
                            stop: int | None, cut: list[int]) -> Tensor:
    """[n_real, D] activations at `hook_name` of the prompts' own tokens, run as one padded batch;
    the full length of each prompt cut to the model's context is added to `cut`."""
    batch = padded_prompts(model, prompts, prepend_bos)
    cut += _cut_lengths(model, prompts, batch.lengths, prepend_bos)
    # tokens given, neither a HookedTransformer nor a TransformerBridge reads padding_side: a
    # Bridge attended the pads and numbered a padded row's positions from its first pad
    with opt_in_hooks(model, hook_name, "activation collection"):
        _, cache = model.run_with_cache(
            batch.tokens_BS, attention_mask=batch.mask_BS, names_filter=lambda n: n == hook_name, stop_at_layer=stop
        )
    acts = cache[hook_name]
    acts_BSD = acts.reshape(acts.shape[0], acts.shape[1], -1)
    return acts_BSD[batch.keep_BS.to(acts_BSD.device)]


def _cut_lengths(model: Model, prompts: list[str], lengths: list[int], prepend_bos: bool | None) -> list[int]:
    """The full lengths of the prompts `padded_prompts` cut to the context: only a prompt it left
    exactly n_ctx long can have been cut, so only those are tokenized again, uncut."""
    n_ctx = getattr(model.cfg, "n_ctx", None)
    at_limit = [p for p, n in zip(prompts, lengths) if n_ctx is not None and n >= n_ctx]
    if not at_limit:
        return []
    full = tokenize_prompts(model, at_limit, prepend_bos).lengths
    return [n for n in full if n > n_ctx]


def _warn_cut(model: Model, n_prompts: int, cut: list[int]) -> None:
    """One warning for all the prompts cut to the context (generate refuses such a prompt; a mean
    over the tokens kept still means something, but not what its user may think)."""
    import warnings

    n_ctx = model.cfg.n_ctx
    some = "1 prompt" if len(cut) == 1 else f"{len(cut)} prompts"
    verb = "exceeds" if len(cut) == 1 else "exceed"
    warnings.warn(SteeringWarning(
        f"{some} of {n_prompts} {verb} the model's context of {n_ctx} tokens (the longest: {max(cut)} tokens): "
        f"their activations are read over their first {n_ctx} tokens only; shorten them to use their ends"
    ), stacklevel=2)


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
