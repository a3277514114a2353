"""Held-out activations for evaluating SAEs: from a model over token contexts, or the rows a
training run held out of its activation cache.

Shape key: N contexts, L context length, R rows (kept token positions), D hook width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import Tensor


class HeldOutActivations(NamedTuple):
    """Activations of several hook points at the same token positions of `tokens`."""

    tokens: Tensor  # [N, L] model inputs
    acts: dict[str, Tensor]  # hook -> [R, D] float32, positions holding an excluded token left out
    row_context: Tensor  # [R] context of each row
    row_position: Tensor  # [R] position of each row in its context
    excluded_ids: tuple[int, ...]  # token ids left out (and kept clean when an SAE is spliced in)


def hook_widths(model, hooks: Sequence[str]) -> dict[str, int]:
    """Width of each hook's per-token vector (one tiny forward pass; unknown hooks are an error
    listing the valid ones)."""
    from training.runner import ActivationRunner

    return ActivationRunner(model, list(hooks), forward="transformer_lens").d_in(2)


def check_widths(model, sae_hooks: dict[str, tuple[str, int]]) -> None:
    """Refuse SAEs whose d_in is not the width of their hook point, before any real work.

    `sae_hooks`: name -> (hook, d_in)."""
    widths = hook_widths(model, sorted({h for h, _ in sae_hooks.values()}))
    for name, (hook, d_in) in sae_hooks.items():
        if widths[hook] != d_in:
            raise ValueError(f"SAE {name!r} reads width d_in={d_in}, but {hook} of this model has width "
                             f"{widths[hook]}; pass the model the SAE was trained on (--model) or its hook (--hook)")


@torch.no_grad()
def collect(model, hooks: Sequence[str], tokens_NL: Tensor, excluded_ids: Iterable[int] = (),
            batch_size: int = 16, progress: bool = False) -> HeldOutActivations:
    """Run `model` over `tokens_NL` (TransformerLens's forward, so values equal SAELens's) and keep
    every hook's activation at positions whose token is not in `excluded_ids`. `progress`: a bar
    (stderr) over the contexts."""
    from tqdm.auto import tqdm

    from training.runner import ActivationRunner

    runner = ActivationRunner(model, list(hooks), forward="transformer_lens")
    excl = torch.tensor(sorted(set(int(i) for i in excluded_ids)), dtype=torch.long)
    tokens_NL = tokens_NL.long()
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    with tqdm(total=len(tokens_NL), desc="held-out activations", unit="context", disable=not progress) as bar:
        for chunk in tokens_NL.split(batch_size):
            got = runner.run(chunk)
            keep = ~torch.isin(chunk, excl) if excl.numel() else torch.ones_like(chunk, dtype=torch.bool)
            for h in hooks:
                parts[h].append(got[h].detach().to("cpu", torch.float32)[keep])
            bar.update(len(chunk))
    kept = positions(tokens_NL, excluded_ids)
    return kept._replace(acts={h: torch.cat(parts[h]) for h in hooks})


class Collector:
    """`collect` that runs the model once per contexts: a call for the contexts of the latest
    collection (equal tokens, the same excluded ids) at hooks among those collected then, with the
    same TransformerLens opt-in flags on, is answered from it without a forward pass (the values are
    the same: the same contexts, batches and forward path; another opt-in flag on changes the last
    float bits). `saesteer eval`'s toy-world probing set is often the held-out text of the group of
    SAEs it reads right after. Only the latest collection is kept: each group's activations are freed
    once the next group's are read."""

    def __init__(self, model, batch_size: int = 16, progress: bool = False) -> None:
        self.model, self.batch_size, self.progress = model, batch_size, progress
        self.latest: tuple[frozenset[str], HeldOutActivations] | None = None  # (opt-in flags on, collection)

    def __call__(self, hooks: Sequence[str], tokens_NL: Tensor, excluded_ids: Iterable[int] = ()) -> HeldOutActivations:
        from saes.hookpoints import opt_in_flags_during

        excl = tuple(sorted(set(int(i) for i in excluded_ids)))
        flags = opt_in_flags_during(self.model, hooks)
        if self.latest is not None:
            got_flags, got = self.latest
            if (got_flags == flags and got.excluded_ids == excl and set(hooks) <= set(got.acts)
                    and got.tokens.shape == tokens_NL.shape and torch.equal(got.tokens, tokens_NL.long())):
                return got._replace(acts={h: got.acts[h] for h in hooks})
        self.latest = None  # the one before is freed before this one is read
        got = collect(self.model, hooks, tokens_NL, excl, self.batch_size, self.progress)
        self.latest = (flags, got)
        return got


def positions(tokens_NL: Tensor, excluded_ids: Iterable[int] = ()) -> HeldOutActivations:
    """The positions `collect` keeps of `tokens_NL`, without running the model (`acts` empty): for
    SAEs whose activation rows come from elsewhere (a cache's held-out rows)."""
    excl = torch.tensor(sorted(set(int(i) for i in excluded_ids)), dtype=torch.long)
    tokens_NL = tokens_NL.long()
    keep_NL = ~torch.isin(tokens_NL, excl) if excl.numel() else torch.ones_like(tokens_NL, dtype=torch.bool)
    ctx, pos = keep_NL.nonzero(as_tuple=True)
    return HeldOutActivations(tokens_NL, {}, ctx, pos, tuple(int(i) for i in excl.tolist()))


def cache_holdout(cache: str | Path, hook: str, rows: int, seed: int, buffer_rows: int,
                  target_hook: str | None = None) -> Tensor:
    """The first `rows` rows of a cache's seeded stream [rows, D] float32: the rows `saesteer train`
    held out of training with this seed and reader buffer (the stream, hence the held-out set, does
    not depend on the batch size). `target_hook`: the same rows of a transcoder's target hook
    instead (the stream of the pair, as its training read it)."""
    from training.reader import CacheReader

    reader = CacheReader(cache, batch_size=min(rows, 4096), hook=hook, seed=seed, epochs=None, buffer_rows=buffer_rows,
                         target_hook=target_hook)
    parts, n = [], 0
    for batch in reader:
        parts.append((batch.acts if target_hook is None else batch.targets).to("cpu", torch.float32))
        n += parts[-1].shape[0]
        if n >= rows:
            break
    if not parts:
        raise ValueError(f"the cache {cache} yielded no rows")
    return torch.cat(parts)[:rows]
