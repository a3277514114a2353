"""Transcoder folders with the installed sae-lens package: ours load in SAELens as its
(skip / JumpReLU) transcoders with the same outputs, SAELens's load in ours, and a TopK transcoder
(no SAELens format) round-trips through our loader."""

import pytest
import torch

pytest.importorskip("sae_lens")
from sae_lens import SAE as SaeLensSAE  # noqa: E402
from sae_lens.saes.transcoder import (  # noqa: E402
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
)

import saes  # noqa: E402
from saes.io import read_sae_folder  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*records no checksum")
D, O, F = 16, 12, 48
TOL = {"rtol": 1e-5, "atol": 1e-5}
X = torch.randn(40, D, generator=torch.Generator().manual_seed(7))
META = {"hook_name": "blocks.0.ln2.hook_normalized", "hook_name_out": "blocks.0.hook_mlp_out"}


def ours(arch, skip, seed=0):
    g = torch.Generator().manual_seed(seed)
    kw = {} if arch in ("jumprelu", "standard") else {"k": 5}
    if arch == "matryoshka_batchtopk":
        kw["matryoshka_widths"] = [12, F]
    sae = saes.create_sae(arch, D, F, generator=g, metadata=dict(META), d_out=O, skip_connection=skip,
                          apply_b_dec_to_input=False, **kw)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.2, generator=g)
        sae.b_dec.normal_(0, 0.2, generator=g)
        if skip:
            sae.W_skip.normal_(0, 0.3, generator=g)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.05, 0.4, generator=g)
    return sae


@pytest.mark.parametrize("arch,saved", [("batchtopk", "jumprelu"), ("matryoshka_batchtopk", "jumprelu"),
                                        ("jumprelu", "jumprelu"), ("standard", "")])
@pytest.mark.parametrize("skip", [False, True])
def test_our_transcoders_load_in_sae_lens_with_the_same_outputs(tmp_path, arch, saved, skip):
    sae = ours(arch, skip)
    saes.save_sae(sae, tmp_path / "t")
    cfg, weights, _ = read_sae_folder(tmp_path / "t")
    name = "skip_transcoder" if skip else "transcoder"
    assert cfg["architecture"] == (f"{saved}_{name}" if saved else name)
    assert cfg["d_out"] == O and cfg["apply_b_dec_to_input"] is False
    assert ("W_skip" in weights) == skip
    sl = SaeLensSAE.load_from_disk(tmp_path / "t")
    assert sl.cfg.metadata.hook_name_out == META["hook_name_out"]
    with torch.no_grad():
        torch.testing.assert_close(sl(X), sae(X).recon, **TOL)
        torch.testing.assert_close(sl.encode(X), sae.encode(X), **TOL)
    back = saes.load_sae(tmp_path / "t")
    assert type(back) is type(sae) and back.d_out == O and (back.W_skip is not None) == skip
    torch.testing.assert_close(back(X).recon, sae(X).recon, **TOL)


def test_a_topk_transcoder_round_trips_in_our_format(tmp_path):
    """SAELens has no TopK transcoder: ours is saved as "topk_skip_transcoder" and loads back exactly."""
    sae = ours("topk", True)
    saes.save_sae(sae, tmp_path / "t")
    assert read_sae_folder(tmp_path / "t")[0]["architecture"] == "topk_skip_transcoder"
    back = saes.load_sae(tmp_path / "t")
    assert back.architecture == "topk" and back.cfg.metadata["hook_name_out"] == META["hook_name_out"]
    torch.testing.assert_close(back(X).recon, sae(X).recon, rtol=0, atol=0)


@pytest.mark.parametrize("jump", [False, True])
def test_sae_lens_skip_transcoders_load_in_ours_with_the_same_outputs(tmp_path, jump):
    kind, cfg_kind = (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig) if jump else (SkipTranscoder, SkipTranscoderConfig)
    sl = kind(cfg_kind(d_in=D, d_sae=F, d_out=O, apply_b_dec_to_input=False))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in sl.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if jump:
            sl.threshold.copy_(torch.rand(F, generator=g) * 0.3)
    sl.cfg.metadata.hook_name = META["hook_name"]
    sl.cfg.metadata.hook_name_out = META["hook_name_out"]
    sl.save_model(tmp_path / "sl")
    got = saes.load_sae(tmp_path / "sl")
    assert got.is_transcoder and got.W_skip is not None and got.architecture == ("jumprelu" if jump else "standard")
    assert got.cfg.metadata["hook_name_out"] == META["hook_name_out"]
    with torch.no_grad():
        torch.testing.assert_close(got(X).recon, sl(X), **TOL)


def test_a_transcoder_config_without_d_out_is_refused(tmp_path):
    import json

    saes.save_sae(ours("batchtopk", False), tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "cfg.json").read_text())
    del cfg["d_out"]
    (tmp_path / "t" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(saes.SAEFormatError, match="d_out"):
        saes.load_sae(tmp_path / "t")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_sae_lens_splices_our_transcoder_as_we_do(tmp_path):
    """HookedSAETransformer.run_with_saes with our saved (non-skip) BatchTopK transcoder gives the logits of
    our own splice (input captured at hook_name, prediction in place of hook_name_out). SAELens's
    splice calls encode + decode, which leaves out a skip transcoder's W_skip x: only ours includes it."""
    from sae_lens import HookedSAETransformer

    from helpers.threads import torch_threads
    from helpers.tiny_model import make_model, make_tokenizer

    with torch_threads(1):
        model = make_model(make_tokenizer(), d_model=16, n_layers=1, n_ctx=16, seed=0)
        hooked = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer)
        hooked.load_state_dict(model.state_dict())
        hooked.eval()
        g = torch.Generator().manual_seed(1)
        sae = saes.create_sae("batchtopk", 16, 48, k=4, generator=g, d_out=16, apply_b_dec_to_input=False,
                              metadata=dict(META))
        with torch.no_grad():
            sae.b_enc.normal_(0, 0.2, generator=g)
            sae.threshold.uniform_(0.0, 0.2, generator=g)
        saes.save_sae(sae, tmp_path / "t")
        sl = SaeLensSAE.load_from_disk(tmp_path / "t")
        tokens = model.to_tokens(["the ship sails over the sea"])
        captured = {}
        with torch.no_grad():
            ours = model.run_with_hooks(tokens, fwd_hooks=[
                (META["hook_name"], lambda a, hook: captured.__setitem__("x", a)),
                (META["hook_name_out"], lambda a, hook: sae(captured["x"]).recon.to(a.dtype)),
            ])
            theirs = hooked.run_with_saes(tokens, saes=[sl])
            clean = model(tokens)
    assert not torch.allclose(ours, clean, atol=1e-3)  # the splice changes the output
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
