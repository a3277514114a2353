"""Gated SAE (Rajamanoharan et al. 2024, SAELens's "gated"), held in its threshold form.

Shape key: D d_in, F d_sae.

SAELens's GatedSAE (sae_lens/saes/gated_sae.py) shares one encoder W between two paths, on the
centred input x_c = x - b_dec:

    gate_f = x_c @ W[:, f] + b_gate_f                        latent f is on where gate_f > 0
    mag_f  = x_c @ (W * exp(r_mag))[:, f] + b_mag_f          its value is relu(mag_f)

Both are affine in the same x_c @ W[:, f]: mag_f = exp(r_mag_f) (gate_f - b_gate_f) + b_mag_f, so
gate_f > 0 exactly where mag_f > t_f with t_f = b_mag_f - exp(r_mag_f) b_gate_f. A gated SAE is
therefore a threshold encoder (`saes/threshold.py`) with W_enc = W * exp(r_mag) (computed as
SAELens computes it, so the values are SAELens's bit for bit), b_enc = b_mag and threshold t: a
latent fires where mag > max(t, 0), as JumpReLU's do, and everything that reads threshold encoders
(steering's per-latent reads included) applies unchanged. Only a gate pre-activation within float
rounding of 0 can be decided the other way than SAELens's `gate > 0` decides it (t is computed in
float64 from the file's tensors); the latent then reads about t where SAELens reads 0, or the reverse.
Measured in float32 on random weights (d_in 768, d_sae 8192, 12% of thresholds negative, 4096 rows):
4 of 33.5M entries, each with |gate| < 4e-6; every other entry equal bit for bit.

Saved in that form, as SAELens's "jumprelu" with `metadata.training_architecture: "gated"`
(SAELens loads it as its JumpReLU SAE, with our outputs; we load it back as this class). Not
trainable here: the trainer trains TopK, BatchTopK, Matryoshka and JumpReLU SAEs.
"""

from __future__ import annotations

from torch import Tensor

from saes.config import GatedConfig
from saes.threshold import ThresholdSAE

GATED_TENSORS = ("b_gate", "b_mag", "r_mag")  # SAELens's gated parameters beyond W_enc, W_dec, b_dec


class GatedSAE(ThresholdSAE):
    architecture = "gated"
    config_class = GatedConfig
    cfg: GatedConfig

    @classmethod
    def saelens_inference_weights(cls, weights: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        if "threshold" in weights and not any(name in weights for name in GATED_TENSORS):
            return weights  # already the threshold form (a folder we saved)
        missing = [n for n in ("W_enc", *GATED_TENSORS) if n not in weights]
        if missing:
            raise ValueError(f"a gated SAE needs W_enc, b_gate, b_mag and r_mag (or, as saesteer saves it, b_enc "
                             f"and threshold); missing {', '.join(missing)}")
        W_DF, b_gate_F, b_mag_F, r_mag_F = (weights[n] for n in ("W_enc", *GATED_TENSORS))
        d_sae = W_DF.shape[-1]
        for name, t in zip(GATED_TENSORS, (b_gate_F, b_mag_F, r_mag_F)):
            if tuple(t.shape) != (d_sae,):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({d_sae},) (W_enc's d_sae)")
        scale_F = r_mag_F.exp()
        threshold_F = b_mag_F.double() - r_mag_F.double().exp() * b_gate_F.double()
        out = {n: t for n, t in weights.items() if n not in GATED_TENSORS}
        out.update(W_enc=W_DF * scale_F, b_enc=b_mag_F, threshold=threshold_F.to(b_mag_F.dtype))
        return out
