"""The eager formulas of the CE / KL splice metrics (training.evaluate.splice_metrics): the model run
once over all the contexts, the whole [contexts, positions, vocab] log-softmax taken at once. The
reference the chunked and row-streamed code is compared with."""

from __future__ import annotations

import torch


@torch.no_grad()
def eager_splice_metrics(model, tokens, keep_ids, hook_name, replace) -> tuple[float, float, float, float, float]:
    """(ce_loss_clean, ce_loss_spliced, ce_loss_zero, ce_loss_recovered, kl_div) of `replace(act)` in
    place of `hook_name`'s output; positions whose token is in `keep_ids` keep their clean activation."""
    keep = torch.isin(tokens, torch.tensor(list(keep_ids), dtype=tokens.dtype))[..., None]

    def spliced_by(fn):
        return lambda act, hook: torch.where(keep, act, fn(act).to(act.dtype))

    clean = torch.log_softmax(model(tokens).float(), -1)[:, :-1]
    with model.hooks(fwd_hooks=[(hook_name, spliced_by(replace))]):
        spliced = torch.log_softmax(model(tokens).float(), -1)[:, :-1]
    with model.hooks(fwd_hooks=[(hook_name, spliced_by(torch.zeros_like))]):
        zero = torch.log_softmax(model(tokens).float(), -1)[:, :-1]
    target = tokens[:, 1:, None]
    ce = [float(-lp.gather(-1, target).mean()) for lp in (clean, spliced, zero)]
    kl = float((clean.exp() * (clean - spliced)).sum(-1).mean())
    return (*ce, (ce[2] - ce[1]) / (ce[2] - ce[0]), kl)
