"""An SAE shared for dictionary_learning users (`saes.formats.dictionary_learning.save`), loaded by its own
`dictionary_learning.utils.load_dictionary`, on a real tiny GPT-2's activations: TopK as its
AutoEncoderTopK, the threshold SAEs of per-latent thresholds (BatchTopK, Matryoshka, JumpReLU) as its
JumpReluAutoEncoder (one threshold: tests/test_convert.py) with the input centring folded into the bias; back
into saesteer at the same hook and model, TopK with the same fingerprint; what it cannot hold refused.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("dictionary_learning")
from dictionary_learning.utils import load_dictionary  # noqa: E402

import saes  # noqa: E402
from saes.fingerprint import sae_fingerprint  # noqa: E402
from saes.formats import dictionary_learning, resolve_sae  # noqa: E402
from saes.io import SAEFormatError  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOKS = ("blocks.1.hook_resid_post", "blocks.0.hook_mlp_out")
TOL = {"rtol": 1e-5, "atol": 2e-5}


@pytest.fixture(scope="module")
def real_acts(real_models):
    from helpers.publish_acts import activations_on_texts

    path = real_models.path("gpt2")
    return path, activations_on_texts(path, HOOKS)


def our_sae(arch: str, hook: str, model_name: str, x_ND: torch.Tensor) -> saes.SAE:
    kw = {} if arch == "jumprelu" else {"k": 8}
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [32, 128]
    g = torch.Generator().manual_seed(11)
    sae = saes.create_sae(arch, x_ND.shape[1], 128, generator=g, metadata={"hook_name": hook, "model_name": model_name},
                          **kw)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3, generator=g)  # a centring that matters: JumpReluAutoEncoder has none
        if hasattr(sae, "threshold"):
            pre_NF = (x_ND - sae.b_dec) @ sae.W_enc + sae.b_enc  # off the quantile: no pre-activation on it
            sae.threshold.copy_(pre_NF.quantile(0.96, dim=0) + 1e-3)
    return sae


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("arch, dict_class", [("topk", "AutoEncoderTopK"), ("batchtopk", "JumpReluAutoEncoder"),
                                              ("matryoshka_batchtopk", "JumpReluAutoEncoder"),
                                              ("jumprelu", "JumpReluAutoEncoder")])
def test_dictionary_learning_loads_a_shared_sae_with_our_outputs(real_acts, tmp_path, arch, dict_class, hook):
    model_dir, acts = real_acts
    x = acts[hook]
    sae = our_sae(arch, hook, str(model_dir), x)
    folder = dictionary_learning.save(sae, tmp_path / "trainer_0")

    ae, config = load_dictionary(str(folder), "cpu")
    assert type(ae).__name__ == dict_class and config["trainer"]["lm_name"] == str(model_dir)
    latents = sae.encode(x)
    assert (latents > 0).sum().item() > x.shape[0]  # latents fire: the comparison is not empty
    torch.testing.assert_close(ae.encode(x), latents, **TOL)
    torch.testing.assert_close(ae.decode(latents), sae.decode(latents), **TOL)
    torch.testing.assert_close(ae(x), sae(x).recon, **TOL)

    back = resolve_sae(folder)
    assert back.sae.cfg.metadata["hook_name"] == hook and back.sae.cfg.metadata["model_name"] == str(model_dir)
    torch.testing.assert_close(back.sae.encode(x), latents, **TOL)
    if arch == "topk":  # the same tensors; the threshold SAEs come back as JumpReLU with the centring folded
        assert sae_fingerprint(back.sae) == sae_fingerprint(sae)


def test_what_dictionary_learning_cannot_hold_is_refused(tmp_path):
    hook_z = saes.create_sae("topk", 64, 128, k=8, metadata={"hook_name": "blocks.1.attn.hook_z"})
    with pytest.raises(SAEFormatError, match="an SAE at blocks.1.attn.hook_z cannot be saved for dictionary_learning"):
        dictionary_learning.save(hook_z, tmp_path / "a")
    assert not list(tmp_path.iterdir())


def test_a_save_removes_the_half_built_folder_a_killed_save_left_beside_it(tmp_path):
    """A new folder is built under a hidden name beside it and renamed in; SIGKILL leaves that hidden folder,
    which the next save of the same folder removes, as `saes.save_sae` does."""
    sae = saes.create_sae("topk", 64, 128, k=8, metadata={"hook_name": "blocks.1.hook_resid_post"})
    left = tmp_path / ".dl.tmp-k1ll3d"
    left.mkdir()
    (left / "ae.pt").write_bytes(b"half")
    dictionary_learning.save(sae, tmp_path / "dl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl"]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ae.pt", "config.json"]
