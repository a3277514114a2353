"""The eager formulas of the CE / KL splice metrics (training.evaluate.splice_metrics): the model run
once over all the contexts, the whole [contexts, positions, vocab] log-softmax taken at once. The
reference the chunked and row-streamed code is compared with."""

from __future__ import annotations

import torch


def eager_ce_kl_sums(logits_NSV, tokens_NS, ref_NSV=None):
    """Summed next-token CE of `logits_NSV` over every predicted position and (against `ref_NSV`, the
    clean logits) summed KL(ref || logits); None without ref (training.evaluate._next_token_ce_kl)."""
    logp = torch.log_softmax(logits_NSV[:, :-1].float(), -1)
    ce = -logp.gather(-1, tokens_NS[:, 1:, None]).sum()
    if ref_NSV is None:
        return ce, None
    ref = torch.log_softmax(ref_NSV[:, :-1].float(), -1)
    return ce, (ref.exp() * (ref - logp)).sum()


@torch.no_grad()
def eager_splice_metrics(model, tokens, keep_ids, hook_name, replace) -> tuple[float, float, float, float, float]:
    """(ce_loss_clean, ce_loss_spliced, ce_loss_zero, ce_loss_recovered, kl_div) of `replace(act)` in
    place of `hook_name`'s output; positions whose token is in `keep_ids` keep their clean activation."""
    keep = torch.isin(tokens, torch.tensor(list(keep_ids), dtype=tokens.dtype))[..., None]

    def spliced_by(fn):
        return lambda act, hook: torch.where(keep, act, fn(act).to(act.dtype))

    clean = model(tokens)
    with model.hooks(fwd_hooks=[(hook_name, spliced_by(replace))]):
        spliced = model(tokens)
    with model.hooks(fwd_hooks=[(hook_name, spliced_by(torch.zeros_like))]):
        zero = model(tokens)
    n = tokens.shape[0] * (tokens.shape[1] - 1)  # predicted positions
    ce = [float(eager_ce_kl_sums(logits, tokens)[0]) / n for logits in (clean, spliced, zero)]
    kl = float(eager_ce_kl_sums(spliced, tokens, clean)[1]) / n
    return (*ce, (ce[2] - ce[1]) / (ce[2] - ce[0]), kl)
