"""saes: sparse autoencoders in plain torch.

Architectures: TopK, BatchTopK, Matryoshka BatchTopK, JumpReLU (learned per-latent thresholds)
(trainable); ThresholdSAE (the threshold encoder: JumpReLU's and BatchTopK / Matryoshka's
inference form), standard ReLU and Gated (for loading; `saes/gated.py`).
What an architecture is, and how to add one: `saes/base.py` and docs/architecture.md.
Folders are SAELens-compatible (`cfg.json` + `sae_weights.safetensors`).

    from saes import create_sae, save_sae, load_sae
    sae = create_sae("topk", d_in=512, d_sae=8192, k=32)
    out = sae(x)                 # SAEOutput(recon, acts, pre_BF)
    dense = sae.encode(x)        # [..., d_sae]

Names are imported lazily (as in `training` and `steering`), so `import saes.errors` from a
config module does not load torch. Importing `saes.step` registers the fast step methods.
"""

from __future__ import annotations

from saes.lazy import lazy_exports

_EXPORTS = {
    "SAE": "base", "Encoding": "base", "SAEOutput": "base",
    "BatchTopKSAE": "batchtopk", "batch_topk_select": "batchtopk",
    "BatchTopKConfig": "config", "GatedConfig": "config", "JumpReLUConfig": "config", "MatryoshkaConfig": "config",
    "ReLUConfig": "config",
    "SAEConfig": "config", "TopKConfig": "config",
    "SaesteerError": "errors",
    "SAEFormatError": "io", "load_sae": "io", "read_provenance": "io", "save_sae": "io", "without_local_paths": "io",
    "auxk_loss": "losses", "explained_variance": "losses", "fvu": "losses", "mse_loss": "losses",
    "GatedSAE": "gated",
    "MatryoshkaSAE": "matryoshka",
    "LossOutput": "objective", "training_loss": "objective",
    "ARCHITECTURES": "registry", "create_sae": "registry", "register": "registry", "sae_class": "registry",
    "trainable_architectures": "registry",
    "ReLUSAE": "relu",
    "SparseActs": "sparse", "sparse_decode": "sparse",
    "STEP_METHODS": "step", "GradResult": "step", "compute_grads": "step",
    "StepWorkspace": "fast_step", "bf16_matmul_is_fast": "fast_step", "fast_grads": "fast_step",
    "JumpReLUSAE": "jumprelu", "ThresholdSAE": "threshold",
    "TopKSAE": "topk",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, submodules=True)
