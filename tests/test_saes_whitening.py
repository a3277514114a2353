"""SAELens training checkpoints of SAEs trained on whitened activations (`covariance_whitening`) load
with the whitening folded in: our SAE on raw activations computes what SAELens's SAE computed in
training (`ActivationScaler.scale` in, `unscale` out), and equals the SAE SAELens saves when training
ends (`fold_activation_whitening`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saes.formats import resolve_sae
from saes.io import SAEFormatError, load_sae, read_sae_folder

sae_lens = pytest.importorskip("sae_lens")

D, F = 8, 32


def _training_sae(arch: str, **cfg):
    classes = {"topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig),
               "batchtopk": (sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig),
               "jumprelu": (sae_lens.JumpReLUTrainingSAE, sae_lens.JumpReLUTrainingSAEConfig),
               "standard": (sae_lens.StandardTrainingSAE, sae_lens.StandardTrainingSAEConfig),
               "gated": (sae_lens.GatedTrainingSAE, sae_lens.GatedTrainingSAEConfig)}
    cls, cfg_cls = classes[arch]
    torch.manual_seed(0)
    sl = cls(cfg_cls(d_in=D, d_sae=F, normalize_activations="covariance_whitening",
                     **({"k": 4} if "topk" in arch else {}), **cfg))
    with torch.no_grad():
        for name, p in sl.named_parameters():
            p.add_(torch.randn_like(p) * 0.3)
            if name == "threshold":  # trained thresholds are >= 0 (the trainer keeps them so)
                p.abs_()
        if arch == "batchtopk":
            sl.topk_threshold.fill_(0.5)
    return sl


def _scaler():
    """An anisotropic whitening (an isotropic one would leave decoder-norm rescaling unchanged)."""
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    g = torch.Generator().manual_seed(1)
    matrix = torch.randn(D, D, dtype=torch.float64, generator=g) * torch.logspace(-1, 1, D, dtype=torch.float64)
    return ActivationScaler(whitening=ActivationWhitening(mean=torch.randn(D, dtype=torch.float64, generator=g),
                                                          matrix=matrix, inverse_matrix=torch.linalg.inv(matrix)))


def _checkpoint(sl, folder: Path):
    """What SAETrainer.save_checkpoint writes: the training SAE's save_model and the scaler's save
    (activation_scaler.json + activation_whitening.safetensors)."""
    scaler = _scaler()
    sl.save_model(str(folder))
    scaler.save(str(folder / "activation_scaler.json"))
    return scaler


X = torch.randn(200, D, generator=torch.Generator().manual_seed(2)) * 2


@pytest.mark.parametrize("arch,cfg", [("topk", {}), ("topk", {"rescale_acts_by_decoder_norm": False}),
                                      ("jumprelu", {}), ("standard", {"apply_b_dec_to_input": False}),
                                      ("gated", {}), ("gated", {"apply_b_dec_to_input": False})])
def test_a_whitened_checkpoint_computes_on_raw_activations_what_it_computed_in_training(arch, cfg, tmp_path):
    sl = _training_sae(arch, **cfg)
    scaler = _checkpoint(sl, tmp_path / "ckpt")
    loaded = resolve_sae(tmp_path / "ckpt")
    with torch.no_grad():
        acts = sl.encode(scaler.scale(X))
        recon = scaler.unscale(sl.decode(acts))
        assert 0 < int((acts > 0).sum()) < acts.numel()
        torch.testing.assert_close(loaded.sae.encode(X), acts, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(loaded.sae(X).recon, recon, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(loaded.sae.encode(X) > 0, acts > 0)
    src = loaded.provenance["source"]
    assert src["activation_whitening_folded"] and "activation_whitening.safetensors" in src["files"]
    torch.testing.assert_close(load_sae(tmp_path / "ckpt").W_enc, loaded.sae.W_enc)  # the Python API folds it too


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_a_whitened_checkpoint_equals_the_sae_saelens_saves_when_training_ends(arch, tmp_path):
    """SAELens's own fold (TopK: decoder norms first, as ours) and inference save."""
    from sae_lens import SAE

    sl = _training_sae(arch)
    scaler = _checkpoint(sl, tmp_path / "ckpt")
    with torch.no_grad():
        w = scaler.whitening
        sl.fold_activation_whitening(w.mean, w.matrix, w.inverse_matrix)
    sl.save_inference_model(str(tmp_path / "final"))
    final = SAE.load_from_disk(str(tmp_path / "final"))
    ours = resolve_sae(tmp_path / "ckpt").sae
    with torch.no_grad():
        ref = final.encode(X)
        torch.testing.assert_close(ours.encode(X) > 0, ref > 0)
        torch.testing.assert_close(ours.encode(X), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours(X).recon, final.decode(ref), rtol=1e-4, atol=1e-4)


def test_what_a_whitened_checkpoint_cannot_be_read_without_is_refused(tmp_path):
    sl = _training_sae("standard")
    _checkpoint(sl, tmp_path / "ckpt")
    with pytest.raises(SAEFormatError, match="load it with saes.load_sae"):
        read_sae_folder(tmp_path / "ckpt")  # raw tensors would silently lack the whitening
    (tmp_path / "ckpt" / "activation_whitening.safetensors").unlink()
    with pytest.raises(SAEFormatError, match="activation_whitening.safetensors .* is missing"):
        resolve_sae(tmp_path / "ckpt")


def test_a_whitened_sae_without_its_scaler_is_refused_saying_what_to_pass(tmp_path):
    """cfg.json says covariance_whitening but activation_scaler.json is not beside it (copied without it,
    or an SAE object): the whitening cannot be folded; the message names the files and the final SAE."""
    sl = _training_sae("standard")
    _checkpoint(sl, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "activation_scaler.json").unlink()
    with pytest.raises(SAEFormatError, match="trained on whitened activations .*activation_scaler.json and "
                                             "activation_whitening.safetensors.*final SAE SAELens saves"):
        resolve_sae(tmp_path / "ckpt")
