"""Our SAE folder in SAELens's HookedSAETransformer next to the same SAE in saesteer, on one text.

    ours, theirs = saelens_side_by_side(model_dir, sae_dir, text, feature=3, value=5.0)
    ours.latents, theirs.latents        # [L, d_sae] latent activations at the SAE's hook
    ours.logits, theirs.logits          # [L, d_vocab] log-probs with latent `feature` clamped to `value`
                                        # (the SAE's reconstruction error kept, as steering does)
    ours.clean, theirs.clean            # [L, d_vocab] log-probs of the model alone

Ours: `saesteer.models.load_model` (a TransformerBridge), `saes.load_sae`, `steering.steer`.
SAELens's: `sae_lens.SAE.load_from_disk(sae_dir)` attached to a HookedSAETransformer holding the
checkpoint's weights (helpers.real_models.hooked_sae_transformer, processed as `processing` says),
with the error term and a hook on `<hook>.hook_sae_acts_post`, as its tutorials steer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Side(NamedTuple):
    latents: torch.Tensor
    logits: torch.Tensor  # log-probabilities (SAELens's default processing shifts raw logits)
    clean: torch.Tensor  # log-probabilities without the SAE


def saelens_side_by_side(model_dir, sae_dir, text: str, *, latent: int, value: float,
                         processing: dict | None = None) -> tuple[Side, Side]:
    from sae_lens import SAE as SaeLensSAE

    import saes
    from helpers.real_models import hooked_sae_transformer
    from saesteer.models import load_model
    from steering import FeatureEdit, steer

    model = load_model(str(model_dir), device="cpu")
    sae = saes.load_sae(sae_dir)
    hook = sae.cfg.metadata["hook_name"]
    prepend_bos = sae.cfg.metadata.get("prepend_bos", True)
    tokens = model.to_tokens(text, prepend_bos=prepend_bos)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
        ours_latents = sae.encode(cache[hook][0].flatten(1))
        ours_clean = model(tokens)[0].log_softmax(-1)
        with steer(model, sae, FeatureEdit(latent, "clamp", value)):
            ours_logits = model(tokens)[0].log_softmax(-1)

    hst = hooked_sae_transformer(model_dir, **(processing or {}))
    sl_sae = SaeLensSAE.load_from_disk(str(sae_dir), device="cpu")
    name = f"{hook}.hook_sae_acts_post"

    def clamp(acts, hook):  # noqa: ARG001 - TransformerLens's hook signature
        acts[..., latent] = value
        return acts

    with torch.no_grad():
        sl_clean = hst(tokens)[0].log_softmax(-1)
        _, sl_cache = hst.run_with_cache_with_saes(tokens, saes=[sl_sae], names_filter=[name])
        hst.add_sae(sl_sae, use_error_term=True)
        try:
            sl_logits = hst.run_with_hooks(tokens, fwd_hooks=[(name, clamp)])[0].log_softmax(-1)
        finally:
            hst.reset_saes()
    return (Side(ours_latents, ours_logits, ours_clean),
            Side(sl_cache[name][0].flatten(0, -2), sl_logits, sl_clean))


def assert_same_outputs(ours: Side, theirs: Side, tol: float = 1e-4) -> None:
    """Equal latents and steered log-probs, and the edit changes the output (else equality is empty)."""
    assert (ours.latents > 0).any(), "no latent fires on the text"
    diff = (ours.latents - theirs.latents).abs().max().item()
    assert diff <= tol * max(1.0, ours.latents.abs().max().item()), f"latents differ by {diff:.3g}"
    diff = (ours.clean - theirs.clean).abs().max().item()
    assert diff <= tol * 10, f"the models' log-probs differ by {diff:.3g}"
    assert (ours.logits - ours.clean).abs().max().item() > 1e-2, "the clamp changes nothing: pick another feature/value"
    diff = (ours.logits - theirs.logits).abs().max().item()
    assert diff <= tol * 10, f"steered log-probs differ by {diff:.3g}"


def cache_vs_model(cache_dir, model, hooks, n_contexts: int = 8) -> dict[str, float]:
    """Worst relative difference (per row) between the cache's first `n_contexts` contexts and the
    model's own activations at the tokens and positions the cache records, per hook; also checks
    that the recorded token ids are the ones at those positions."""
    import json
    from pathlib import Path

    from training.shards import load_tensors

    man = json.loads((Path(cache_dir) / "manifest.json").read_text())
    shard = load_tensors(Path(cache_dir) / man["shards"][0]["file"])
    first = int(man["shards"][0]["first_context"])
    tokens = shard["context_tokens"][:n_contexts].long()
    rows = (shard["seq_index"] - first) < n_contexts
    seq, pos = shard["seq_index"][rows] - first, shard["positions"][rows].long()
    assert torch.equal(shard["token_ids"][rows].long(), tokens[seq, pos]), "recorded token ids are not the context's"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(hooks))
    out = {}
    for hook in hooks:
        want = cache[hook][seq, pos].flatten(1)
        got = shard[f"acts/{hook}"][rows].float()
        out[hook] = ((got - want).norm(dim=1) / want.norm(dim=1).clamp_min(1e-6)).max().item()
    return out
