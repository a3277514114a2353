"""Interop with the installed sae-lens package: folders both ways, same outputs (fp32, 1e-5)."""

import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import SAE as SaeLensSAE  # noqa: E402
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig  # noqa: E402
from sae_lens.saes.jumprelu_sae import JumpReLUSAE as SLJumpReLU  # noqa: E402
from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig  # noqa: E402
from sae_lens.saes.matryoshka_batchtopk_sae import (  # noqa: E402
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig  # noqa: E402
from sae_lens.saes.topk_sae import TopKSAE as SLTopK  # noqa: E402
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402

import saes  # noqa: E402
from saes.interop import from_sae_lens, to_sae_lens  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-5}
D, F = 24, 96


def ours(arch, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    if arch != "jumprelu" and arch != "standard":
        kw.setdefault("k", 6)
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [12, 40, F]
    sae = saes.create_sae(arch, D, F, generator=g, metadata={"hook_name": "blocks.1.hook_resid_post"}, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=g)
        sae.b_dec.normal_(0, 0.2, generator=g)
        sae.W_dec.mul_(torch.rand(F, 1, generator=g) + 0.5)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.05, 0.4, generator=g)
    return sae


def randomize_sl(sl, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sl.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if hasattr(sl, "threshold"):
            sl.threshold.copy_(torch.rand(F, generator=g) * 0.3)
    return sl


X = torch.randn(64, D, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "standard"])
def test_our_folders_load_in_sae_lens_with_the_same_outputs(tmp_path, arch):
    sae = ours(arch)
    saes.save_sae(sae, tmp_path / "s", provenance={"trained_by": "test"})
    sl = SaeLensSAE.load_from_disk(tmp_path / "s")
    assert sl.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    acts = sae.encode(X)
    torch.testing.assert_close(sl.encode(X), acts, **TOL)
    torch.testing.assert_close(sl.decode(acts), sae.decode(acts), **TOL)
    torch.testing.assert_close(sl(X), sae(X).recon, **TOL)
    # and to_sae_lens gives the same object without a folder
    torch.testing.assert_close(to_sae_lens(sae).encode(X), acts, **TOL)


def check_same(sl, sae):
    torch.testing.assert_close(sae.encode(X), sl.encode(X), **TOL)
    acts = sl.encode(X)
    torch.testing.assert_close(sae.decode(acts), sl.decode(acts), **TOL)


@pytest.mark.parametrize("rescale", [False, True])
def test_sae_lens_topk_folders_load_into_ours(tmp_path, rescale):
    sl = randomize_sl(SLTopK(TopKSAEConfig(d_in=D, d_sae=F, k=6, rescale_acts_by_decoder_norm=rescale)))
    sl.save_model(tmp_path / "s")
    sae = saes.load_sae(tmp_path / "s")
    assert isinstance(sae, saes.TopKSAE) and sae.cfg.k == 6
    check_same(sl, sae)


def test_sae_lens_jumprelu_and_standard_folders_load_into_ours(tmp_path):
    for cls, cfg_cls, ours_cls in [(SLJumpReLU, JumpReLUSAEConfig, saes.JumpReLUSAE), (StandardSAE, StandardSAEConfig, saes.ReLUSAE)]:
        sl = randomize_sl(cls(cfg_cls(d_in=D, d_sae=F)))
        sl.save_model(tmp_path / cls.__name__)
        sae = saes.load_sae(tmp_path / cls.__name__)
        assert type(sae) is ours_cls
        check_same(sl, sae)


def trained_sl_batchtopk(cls, cfg):
    sl = cls(cfg)
    with torch.no_grad():
        sl.W_enc.copy_(torch.randn(D, F, generator=torch.Generator().manual_seed(3)) * 0.3)
        sl.b_enc.normal_(0, 0.1)
        sl.W_dec.mul_(torch.rand(F, 1) + 0.5)
        sl.topk_threshold.fill_(0.25)
    return sl


@pytest.mark.parametrize("matryoshka", [False, True])
def test_sae_lens_batchtopk_inference_and_training_folders_load_into_ours(tmp_path, matryoshka):
    if matryoshka:
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=6, matryoshka_widths=[16, 48, F])
        sl = trained_sl_batchtopk(MatryoshkaBatchTopKTrainingSAE, cfg)
        ours_cls = saes.MatryoshkaSAE
    else:
        cfg = BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=6)
        sl = trained_sl_batchtopk(BatchTopKTrainingSAE, cfg)
        ours_cls = saes.BatchTopKSAE
    sl.save_inference_model(tmp_path / "inference")
    reference = SaeLensSAE.load_from_disk(tmp_path / "inference")  # SAELens's own inference form
    sae = saes.load_sae(tmp_path / "inference")
    assert type(sae) is ours_cls and sae.cfg.k == 6
    if matryoshka:
        assert sae.levels == [16, 48, F]
    check_same(reference, sae)
    # the training-form folder (global topk_threshold, decoder-norm rescaling) gives the same SAE
    sl.save_model(tmp_path / "training")
    check_same(reference, saes.load_sae(tmp_path / "training"))


def test_from_sae_lens_converts_a_loaded_object():
    sl = randomize_sl(SLJumpReLU(JumpReLUSAEConfig(d_in=D, d_sae=F)))
    check_same(sl, from_sae_lens(sl))
