"""A researcher shares an SAE saesteer saved; SAELens users load it with SAELens's own code.

On real activations of a tiny trained GPT-2 (tests/helpers/real_models.py) at the residual stream,
the MLP's output and attention's hook_z (SAELens reshapes [.., n_heads, d_head] itself), for every
architecture we train and a skip transcoder: `SAE.load_from_disk` of the folder and
`SAE.from_pretrained(repo, folder)` of it in an HF-cache snapshot (what `upload_folder` puts on the
hub, read offline) give our latents, reconstruction and forward, and the hook and model names
SAELens and TransformerLens look for. Back again: a folder SAELens saved of it loads as the same SAE
(architecture, Matryoshka prefixes, fingerprint), and our `sae_lens:REPO/FOLDER` loader gives the
SAE whose fingerprint a store built on the local folder records.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import SAE as SaeLensSAE  # noqa: E402

import saes  # noqa: E402
from saes.fingerprint import sae_fingerprint  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]

HOOKS = ("blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.attn.hook_z")
ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")
D_SAE = 192


@pytest.fixture(scope="module")
def real_acts(real_models):
    """The tiny GPT-2's folder and its activations at HOOKS (and the MLP's input), hook-shaped."""
    from helpers.publish_acts import activations_on_texts

    path = real_models.path("gpt2")
    return path, activations_on_texts(path, [*HOOKS, "blocks.0.ln2.hook_normalized"])


def our_sae(arch: str, hook: str, d_in: int, model_name: str, x_ND: torch.Tensor, **kw) -> saes.SAE:
    """A random SAE whose thresholds fire on ~4% of the real rows (each latent its own quantile)."""
    g = torch.Generator().manual_seed(len(arch) + len(hook))
    if arch != "jumprelu":
        kw.setdefault("k", 8)
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [24, 96, D_SAE]
    sae = saes.create_sae(arch, d_in, D_SAE, generator=g, metadata={"hook_name": hook, "model_name": model_name}, **kw)
    if hasattr(sae, "threshold"):
        with torch.no_grad():
            centred = x_ND - sae.b_dec if sae.cfg.apply_b_dec_to_input else x_ND
            sae.threshold.copy_((centred @ sae.W_enc + sae.b_enc).quantile(0.96, dim=0).clamp_min(1e-3))
    return sae


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    theirs = theirs.reshape(ours.shape)
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5 * max(1.0, ours.abs().max().item()), f"{what} differ by {diff:.3g}"


def check_saelens_matches(sl, sae: saes.SAE, acts: torch.Tensor) -> None:
    """SAELens's encode / decode / forward on hook-shaped activations equal ours on the flat rows."""
    x = acts.flatten(1)
    latents = sae.encode(x)
    assert ((latents > 0).sum(-1) > 0).float().mean() > 0.25, "the SAE hardly fires on the text: nothing compared"
    sl_latents = sl.encode(acts)
    assert_same(latents, sl_latents, "latents")
    assert_same(sae.decode(latents), sl.decode(sl_latents), "reconstructions")
    assert_same(sae(x).recon, sl(acts), "forward outputs")


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("arch", ARCHS)
def test_a_saved_sae_loads_in_saelens_with_our_outputs_and_comes_back_the_same(real_acts, tmp_path, arch, hook):
    model_dir, acts = real_acts
    sae = our_sae(arch, hook, acts[hook][0].numel(), str(model_dir), acts[hook].flatten(1))
    saes.save_sae(sae, tmp_path / "shared")

    sl = SaeLensSAE.load_from_disk(str(tmp_path / "shared"))
    check_saelens_matches(sl, sae, acts[hook])
    assert sl.cfg.metadata.hook_name == hook and sl.cfg.metadata.model_name == str(model_dir)
    assert sl.cfg.reshape_activations == ("hook_z" if hook.endswith("hook_z") else "none")

    sl.save_model(str(tmp_path / "resaved"))  # what a SAELens user shares on
    back = saes.load_sae(tmp_path / "resaved")
    assert type(back) is type(sae) and back.cfg.metadata["hook_name"] == hook
    if arch == "matryoshka_batchtopk":
        assert back.levels == [24, 96, D_SAE]
    assert sae_fingerprint(back) == sae_fingerprint(sae)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_a_skip_transcoder_loads_in_saelens_with_our_outputs(real_acts, tmp_path, arch):
    model_dir, acts = real_acts
    x, target = acts["blocks.0.ln2.hook_normalized"], "blocks.0.hook_mlp_out"
    sae = our_sae(arch, "blocks.0.ln2.hook_normalized", x.shape[-1], str(model_dir), x, d_out=acts[target].shape[-1],
                  skip_connection=True, apply_b_dec_to_input=False)
    sae.cfg.metadata["hook_name_out"] = target
    with torch.no_grad():
        sae.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    saes.save_sae(sae, tmp_path / "tc")
    sl = SaeLensSAE.load_from_disk(str(tmp_path / "tc"))
    assert type(sl).__name__ == "JumpReLUSkipTranscoder" and sl.cfg.metadata.hook_name_out == target
    check_saelens_matches(sl, sae, x)
    sl.save_model(str(tmp_path / "resaved"))
    assert sae_fingerprint(saes.load_sae(tmp_path / "resaved")) == sae_fingerprint(sae)


def test_an_uploaded_folder_loads_with_from_pretrained_and_as_the_same_sae_in_ours(real_acts, tmp_path, monkeypatch):
    """The folder as `huggingface_hub.upload_folder` shares it (every file in it; nothing else), read from
    an offline HF cache by SAELens's `from_pretrained` and by our `sae_lens:REPO/FOLDER` spec."""
    from huggingface_hub import constants

    from helpers.foreign_saes import write_hf_snapshot
    from saes.formats import resolve_sae

    model_dir, acts = real_acts
    hook = "blocks.1.attn.hook_z"
    sae = our_sae("matryoshka_batchtopk", hook, acts[hook][0].numel(), "gpt2", acts[hook].flatten(1))
    folder = saes.save_sae(sae, tmp_path / "saes" / hook, provenance={"tool": "saesteer"})
    shared = sorted(p.name for p in folder.iterdir())
    assert shared == ["cfg.json", "sae_weights.safetensors", "saesteer.json"]  # no temporary or lock file shared
    write_hf_snapshot(tmp_path / "hub", "someone/toy-saes", {f"{hook}/{name}": folder / name for name in shared})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sl = SaeLensSAE.from_pretrained("someone/toy-saes", hook)
    check_saelens_matches(sl, sae, acts[hook])
    assert sl.cfg.metadata.hook_name == hook and sl.cfg.metadata.model_name == "gpt2"

    loaded = resolve_sae(f"sae_lens:someone/toy-saes/{hook}")
    assert type(loaded.sae) is saes.MatryoshkaSAE and loaded.sae.levels == [24, 96, D_SAE]
    assert sae_fingerprint(loaded.sae) == sae_fingerprint(sae)  # a store built on the local folder takes it
    record = json.loads((folder / "saesteer.json").read_text())
    assert record["files"]["sae_weights.safetensors"]["sha256"]  # the checksum travels with the upload


@pytest.mark.parametrize("arch", ["topk", "matryoshka_batchtopk"])
def test_a_bfloat16_sae_loads_in_saelens_as_bfloat16_with_our_outputs(real_acts, tmp_path, arch):
    model_dir, acts = real_acts
    hook = "blocks.1.hook_resid_post"
    sae = our_sae(arch, hook, 64, str(model_dir), acts[hook]).to(torch.bfloat16)
    saes.save_sae(sae, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "cfg.json").read_text())["dtype"] == "bfloat16"
    sl = SaeLensSAE.load_from_disk(str(tmp_path / "bf16"))
    assert sl.W_enc.dtype == torch.bfloat16 and sl.cfg.dtype == "bfloat16"
    x = acts[hook].to(torch.bfloat16)
    latents = sae.encode(x)
    assert (latents > 0).any(-1).float().mean() > 0.25
    torch.testing.assert_close(sl.encode(x), latents, rtol=0, atol=0)  # the same bf16 products and selection
    recon = sae(x).recon.float()  # decoding sums in another order: bf16 rounding apart
    torch.testing.assert_close(sl(x).float(), recon, rtol=2e-2, atol=2e-2 * recon.abs().max().item())
    assert sae_fingerprint(saes.load_sae(tmp_path / "bf16")) == sae_fingerprint(sae)
