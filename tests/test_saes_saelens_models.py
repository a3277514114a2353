"""Our SAE folders in SAELens's model wrappers: HookedSAETransformer (the toy HookedTransformer) and
SAETransformerBridge (an HF GPT-2 checkpoint), on the residual stream and on attn.hook_z (all
heads, flattened; cfg.json's reshape_activations "hook_z"). With the SAE spliced in, and with a
latent clamped through the SAE with its error term kept, SAELens's logits equal ours (our splice:
`training.evaluate.sae_reconstructor`, what the CE evaluation uses; our steering: `steering.steer`).
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("sae_lens")

import saes  # noqa: E402
from saesteer.models import load_model  # noqa: E402
from steering import steer  # noqa: E402
from training.evaluate import sae_reconstructor  # noqa: E402

HOOKS = ["blocks.1.attn.hook_z", "blocks.2.hook_resid_post"]
TOL = {"rtol": 1e-4, "atol": 1e-4}


def make_sae(arch: str, d_in: int, hook: str, seed: int) -> saes.SAE:
    g = torch.Generator().manual_seed(seed)
    sae = saes.create_sae(arch, d_in, 96, k=8, generator=g, metadata={"hook_name": hook})
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=g)
        sae.b_dec.normal_(0, 0.1, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.0, 0.05, generator=g)
    return sae


def tokens_for(model, n: int = 3, length: int = 12) -> torch.Tensor:
    toks = torch.randint(1, int(model.cfg.d_vocab), (n, length), generator=torch.Generator().manual_seed(5))
    bos = model.tokenizer.bos_token_id
    if bos is not None:
        toks[:, 0] = bos
    return toks


def our_splice(model, sae, hook, toks):
    recon = sae_reconstructor(sae)
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, lambda act, hook: recon(act))]):
        return model(toks)


def our_clamp(model, sae, latent, value, toks):
    with torch.no_grad(), steer(model, sae, [f"{latent}:clamp={value}"]):
        return model(toks)


def saelens_clamp(sl_model, sl_sae, hook, latent, value, toks):
    def clamp(acts, hook):
        acts[..., latent] = value
        return acts

    sl_model.add_sae(sl_sae, use_error_term=True)
    # SAETransformerBridge attaches under the hook's canonical name (blocks.2.hook_out) and says where
    name = sl_model.get_sae_hook_name(sl_sae) if hasattr(sl_model, "get_sae_hook_name") else f"{hook}.hook_sae_acts_post"
    assert name in sl_model.hook_dict
    try:
        with torch.no_grad(), sl_model.hooks(fwd_hooks=[(name, clamp)]):
            return sl_model(toks)
    finally:
        sl_model.reset_saes()


def load_in_sae_lens(sae, folder):
    from sae_lens import SAE as SaeLensSAE

    saes.save_sae(sae, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SAELens's note on model_from_pretrained_kwargs, if any
        return SaeLensSAE.load_from_disk(folder)


def check_model_pair(ours_model, sl_model, tmp_path, splice_saelens):
    toks = tokens_for(ours_model)
    with torch.no_grad():
        clean = ours_model(toks)
        torch.testing.assert_close(sl_model(toks), clean, **TOL)  # the same model to start with
    for i, hook in enumerate(HOOKS):
        d_in = int(ours_model.cfg.d_model) if hook.endswith("resid_post") else int(
            ours_model.cfg.n_heads * ours_model.cfg.d_head)
        for arch in ("topk", "batchtopk"):
            sae = make_sae(arch, d_in, hook, seed=10 * i + (arch == "topk"))
            sl = load_in_sae_lens(sae, tmp_path / f"{arch}-{i}")
            spliced = our_splice(ours_model, sae, hook, toks)
            assert (spliced - clean).abs().max() > 1e-2  # the splice changes the logits
            torch.testing.assert_close(splice_saelens(sl, toks), spliced, **TOL)
            latent = 7
            clamped = our_clamp(ours_model, sae, latent, 3.0, toks)
            assert (clamped - clean).abs().max() > 1e-3
            torch.testing.assert_close(saelens_clamp(sl_model, sl, hook, latent, 3.0, toks), clamped, **TOL)
            assert sl.cfg.reshape_activations == ("hook_z" if hook.endswith("hook_z") else "none")
            if hook.endswith("hook_z"):  # every head, not one
                assert "hook_head_index" in sl.cfg.metadata and sl.cfg.metadata.hook_head_index is None


def test_hooked_sae_transformer_runs_our_resid_and_hook_z_saes_like_ours(tmp_path):
    from sae_lens import HookedSAETransformer

    model = load_model("toy", device="cpu")
    sl_model = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer)
    sl_model.load_state_dict(model.state_dict())
    sl_model.eval()

    def splice(sl, toks):
        with torch.no_grad():
            return sl_model.run_with_saes(toks, saes=[sl])

    check_model_pair(model, sl_model, tmp_path, splice)


def test_sae_transformer_bridge_runs_our_saes_on_an_hf_checkpoint_like_ours(tmp_path):
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    from helpers.tiny_hf import save_tiny_gpt2

    path = save_tiny_gpt2(tmp_path / "gpt2", n_layer=3, n_embd=48, n_head=4)
    model = load_model(str(path), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sl_model = SAETransformerBridge.boot_transformers(str(path), device="cpu")
    sl_model.eval()

    def splice(sl, toks):
        with torch.no_grad():
            return sl_model.run_with_saes(toks, saes=[sl])

    check_model_pair(model, sl_model, tmp_path, splice)


def test_the_ce_evaluation_splices_a_hook_z_sae():
    """`splice_metrics` hands the hook's [B, S, heads, d_head] activation to the reconstruction."""
    from training.evaluate import splice_metrics

    model = load_model("toy", device="cpu")
    sae = make_sae("topk", 128, "blocks.1.attn.hook_z", seed=3)
    m = splice_metrics(model, sae_reconstructor(sae), "blocks.1.attn.hook_z", tokens_for(model, 2, 16))
    assert m.ce_loss_spliced > m.ce_loss_clean and m.kl_div > 0
