"""The sparsify and dictionary_learning exporters on the SAEs a user holds beyond our trained ones, read by
those libraries' own loaders on a real tiny GPT-2's activations (code, accented prose, CJK):

- a ReLU SAE (SAELens's "standard", e.g. a pretrained residual-stream SAE) for dictionary_learning: its
  `AutoEncoder` where the decoder rows are unit-norm, else its `JumpReluAutoEncoder` with threshold 0
  (`AutoEncoder.from_pretrained` rescales another decoder, and the latents with it); it was refused as
  "no class computing it";
- a TopK SAE that does not centre its input (apply_b_dec_to_input false) for both: the centring their
  encoders apply is folded into the bias; it was refused as "a topk SAE ... only a TopK SAE computes";
- a TopK transcoder (with and without a skip connection) as sparsify's `transcode: true` hookpoint, read
  from the hookpoint's input and predicting its output; it was refused as an SAE sparsify cannot compute;
- an SAE on a block's input (blocks.N.hook_resid_pre, SAELens's usual residual-stream hook) as the output of
  block N-1, the same tensor (sparsify's hookpoint `h.{N-1}`, dictionary_learning's `resid_post_layer_{N-1}`,
  as delphi pairs them); it was refused as reading another hook;
- what neither can hold is refused naming why (not a self-contradiction); a full disk an OSError naming the file.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sparsify")
pytest.importorskip("dictionary_learning")
from dictionary_learning.utils import load_dictionary  # noqa: E402
from sparsify import SparseCoder  # noqa: E402

import saes  # noqa: E402
from saes.formats import dictionary_learning, resolve_sae, sparsify  # noqa: E402
from saes.io import SAEFormatError  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

RESID_PRE, RESID_POST = "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"
TOL = {"rtol": 1e-5, "atol": 2e-5}


@pytest.fixture(scope="module")
def real_acts(real_models):
    from helpers.publish_acts import activations_on_texts

    path = real_models.path("gpt2")
    return str(path), activations_on_texts(path, [RESID_PRE, RESID_POST])


def random_sae(arch: str, x_ND: torch.Tensor, model: str, hook: str = RESID_POST, **kw) -> saes.SAE:
    g = torch.Generator().manual_seed(5)
    sae = saes.create_sae(arch, x_ND.shape[1], 128, generator=g, metadata={"hook_name": hook, "model_name": model},
                          **kw)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3, generator=g)  # a centring that matters
        if arch == "standard":  # a bias that keeps ~10% of the latents on, as a trained ReLU SAE's does
            sae.b_enc.copy_(-(x_ND @ sae.W_enc).quantile(0.9, dim=0))
    return sae


def check_same(ours: saes.SAE, encode, decode, forward, x: torch.Tensor) -> None:
    latents = ours.encode(x)
    assert (latents > 0).float().sum(-1).mean() > 2  # latents fire: the comparison is not empty
    torch.testing.assert_close(encode(x), latents, **TOL)
    torch.testing.assert_close(decode(latents), ours.decode(latents), **TOL)
    torch.testing.assert_close(forward(x), ours(x).recon, **TOL)


@pytest.mark.parametrize("unit_decoder, dict_class", [(True, "AutoEncoder"), (False, "JumpReluAutoEncoder")])
@pytest.mark.parametrize("centres", [True, False])
def test_a_relu_sae_loads_in_dictionary_learning_with_our_outputs(real_acts, tmp_path, unit_decoder, dict_class,
                                                                  centres):
    model, acts = real_acts
    x = acts[RESID_POST]
    sae = random_sae("standard", x, model, apply_b_dec_to_input=centres)
    with torch.no_grad():
        sae.W_dec.mul_(1.0 if unit_decoder else torch.linspace(0.5, 2.0, sae.d_sae)[:, None])
    if unit_decoder:
        sae.normalize_decoder_()
    folder = dictionary_learning.save(sae, tmp_path / "trainer_0")

    ae, config = load_dictionary(str(folder), "cpu")
    assert type(ae).__name__ == dict_class == config["trainer"]["dict_class"]
    check_same(sae, ae.encode, ae.decode, ae, x)
    back = resolve_sae(folder)  # our reader: the same latents at the same hook
    assert back.sae.cfg.metadata["hook_name"] == RESID_POST
    torch.testing.assert_close(back.sae.encode(x), sae.encode(x), **TOL)


def test_a_topk_sae_that_does_not_centre_its_input_is_shared_with_the_centring_folded(real_acts, tmp_path):
    model, acts = real_acts
    x = acts[RESID_POST]
    sae = random_sae("topk", x, model, k=8, apply_b_dec_to_input=False)

    coder = SparseCoder.load_from_disk(sparsify.save(sae, tmp_path / "run", "h.1"))

    def coder_encode(x_ND):
        enc = coder.encode(x_ND)
        return torch.zeros(x_ND.shape[0], sae.d_sae).scatter(1, enc.top_indices, enc.top_acts)

    def coder_decode(latents_NF):
        vals, idx = latents_NF.topk(sae.cfg.k, dim=-1)
        return coder.decode(vals, idx)

    check_same(sae, coder_encode, coder_decode, lambda x_ND: coder(x_ND).sae_out, x)

    ae, _ = load_dictionary(str(dictionary_learning.save(sae, tmp_path / "dl")), "cpu")
    assert type(ae).__name__ == "AutoEncoderTopK"
    check_same(sae, ae.encode, ae.decode, ae, x)


@pytest.mark.parametrize("skip", [False, True])
def test_a_topk_transcoder_loads_in_sparsify_with_our_outputs_and_comes_back_at_its_hooks(real_acts, tmp_path, skip):
    model, acts = real_acts
    x = acts[RESID_PRE]
    tc = random_sae("topk", x, model, hook=RESID_PRE, k=8, d_out=x.shape[1], skip_connection=skip,
                    apply_b_dec_to_input=False)
    tc.cfg.metadata["hook_name_out"] = RESID_POST
    if skip:
        with torch.no_grad():
            tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    folder = sparsify.save(tc, tmp_path / "run", "h.1")

    coder = SparseCoder.load_from_disk(folder)
    assert coder.cfg.transcode and coder.cfg.skip_connection == skip
    enc = coder.encode(x)
    dense = torch.zeros(x.shape[0], tc.d_sae).scatter(1, enc.top_indices, enc.top_acts)
    latents = tc.encode(x)
    assert (latents > 0).sum(-1).float().mean() > 4
    torch.testing.assert_close(dense, latents, **TOL)
    torch.testing.assert_close(coder(x).sae_out, tc(x).recon, **TOL)

    back = resolve_sae(folder).sae
    assert back.is_transcoder and (back.W_skip is not None) == skip
    assert (back.cfg.metadata["hook_name"], back.cfg.metadata["hook_name_out"]) == (RESID_PRE, RESID_POST)
    torch.testing.assert_close(back(x).recon, tc(x).recon, **TOL)


def test_an_sae_on_a_block_input_is_shared_as_the_previous_block_output(real_acts, tmp_path):
    model, acts = real_acts
    x = acts[RESID_PRE]
    sae = random_sae("topk", x, model, hook=RESID_PRE, k=8)

    coder = SparseCoder.load_from_disk(sparsify.save(sae, tmp_path / "run", "h.0"))
    enc = coder.encode(x)
    torch.testing.assert_close(torch.zeros(x.shape[0], sae.d_sae).scatter(1, enc.top_indices, enc.top_acts),
                               sae.encode(x), **TOL)
    ae, config = load_dictionary(str(dictionary_learning.save(sae, tmp_path / "dl")), "cpu")
    assert config["trainer"]["submodule_name"] == "resid_post_layer_0"
    check_same(sae, ae.encode, ae.decode, ae, x)
    for folder in (tmp_path / "run" / "h.0", tmp_path / "dl"):  # back at the hook of the same tensor
        assert resolve_sae(folder).sae.cfg.metadata["hook_name"] == "blocks.0.hook_resid_post"

    first = random_sae("topk", x, model, hook="blocks.0.hook_resid_pre", k=8)  # the embeddings: no block outputs it
    with pytest.raises(SAEFormatError, match=r"hookpoint 'h\.0' is read as blocks\.0\.hook_resid_post, but the SAE "
                                             r"reads blocks\.0\.hook_resid_pre"):
        sparsify.save(first, tmp_path / "run2", "h.0")
    with pytest.raises(SAEFormatError, match="an SAE at blocks.0.hook_resid_pre cannot be saved for dictionary_learning"):
        dictionary_learning.save(first, tmp_path / "dl2")


def test_a_transcoder_at_another_hookpoint_is_refused_naming_both(tmp_path):
    tc = saes.create_sae("topk", 64, 128, k=8, d_out=64, apply_b_dec_to_input=False,
                         metadata={"hook_name": RESID_PRE, "hook_name_out": RESID_POST, "model_name": "gpt2"})
    with pytest.raises(SAEFormatError, match=r"hookpoint 'h\.0' is read as blocks\.0\.hook_resid_pre, but the "
                                             r"transcoder reads blocks\.1\.hook_resid_pre"):
        sparsify.save(tc, tmp_path / "run", "h.0")
    tc.cfg.metadata["hook_name_out"] = "blocks.1.hook_mlp_out"
    with pytest.raises(SAEFormatError, match=r"hookpoint 'h\.1' predicts blocks\.1\.hook_resid_post, but the "
                                             r"transcoder predicts blocks\.1\.hook_mlp_out"):
        sparsify.save(tc, tmp_path / "run", "h.1")
    assert not (tmp_path / "run").exists()


def test_what_they_cannot_hold_is_refused_saying_why(tmp_path):
    relu = saes.create_sae("standard", 64, 128, metadata={"hook_name": RESID_POST})
    with pytest.raises(SAEFormatError, match="a standard SAE cannot be saved for sparsify: its SparseCoder encodes "
                                             "with a per-token top-k"):
        sparsify.save(relu, tmp_path / "run", "h.1")
    wide = saes.create_sae("topk", 64, 128, k=8, d_out=32, apply_b_dec_to_input=False,
                           metadata={"hook_name": RESID_PRE, "hook_name_out": RESID_POST})
    with pytest.raises(SAEFormatError, match="a transcoder of d_in 64 and d_out 32 cannot be saved for sparsify"):
        sparsify.save(wide, tmp_path / "run", "h.1")
    with pytest.raises(SAEFormatError, match="a transcoder cannot be saved for dictionary_learning"):
        dictionary_learning.save(wide, tmp_path / "dl")
    assert not list(tmp_path.iterdir())


def test_a_full_disk_while_sharing_for_dictionary_learning_is_an_os_error_naming_the_file(tmp_path):
    """torch.save's zip writer reported the failed write as "RuntimeError: [enforce fail at inline_container.cc]
    unexpected pos ...", which the CLI's boundary calls a bug in saesteer."""
    from helpers.full_disk import file_size_limit
    from saesteer.boundary import message_for

    sae = saes.create_sae("topk", 512, 128, k=8, metadata={"hook_name": RESID_POST})  # 256 KiB per matrix
    with file_size_limit(128 * 1024), pytest.raises(OSError) as caught:
        dictionary_learning.save(sae, tmp_path / "dl")
    text, status = message_for(caught.value)
    assert text.startswith(f"{tmp_path / 'dl' / 'ae.pt'}: File too large"), text
    assert "file size limit" in text and "bug" not in text and status == 1, text
    assert not list(tmp_path.iterdir())  # no partial folder or temporary file left
