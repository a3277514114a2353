"""saes: sparse autoencoders in plain torch.

Architectures: TopK, BatchTopK, Matryoshka BatchTopK (trainable); JumpReLU (threshold
encoder; the inference form of BatchTopK and Matryoshka) and standard ReLU (for loading).
Folders are SAELens-compatible (`cfg.json` + `sae_weights.safetensors`).

    from saes import create_sae, save_sae, load_sae
    sae = create_sae("topk", d_in=512, d_sae=8192, k=32)
    out = sae(x)                 # SAEOutput(recon, acts, pre_BF)
    dense = sae.encode(x)        # [..., d_sae]
"""

from saes.base import SAE, Encoding, SAEOutput
from saes.batchtopk import BatchTopKSAE, batch_topk_select
from saes.config import BatchTopKConfig, JumpReLUConfig, MatryoshkaConfig, ReLUConfig, SAEConfig, TopKConfig
from saes.io import SAEFormatError, load_sae, read_provenance, save_sae
from saes.losses import auxk_loss, explained_variance, fvu, mse_loss
from saes.matryoshka import MatryoshkaSAE
from saes.objective import LossOutput, training_loss
from saes.registry import ARCHITECTURES, TRAINABLE, create_sae, sae_class
from saes.relu import ReLUSAE
from saes.sparse import SparseActs, sparse_decode
from saes.step import STEP_METHODS, GradResult, compute_grads
from saes.fast_step import StepWorkspace, bf16_matmul_is_fast, fast_grads  # registers "fast", "fast_bf16"
from saes.threshold import JumpReLUSAE
from saes.topk import TopKSAE

__all__ = [
    "ARCHITECTURES", "TRAINABLE", "SAE", "SAEConfig", "SAEFormatError", "SAEOutput", "Encoding", "LossOutput",
    "BatchTopKConfig", "BatchTopKSAE", "JumpReLUConfig", "JumpReLUSAE", "MatryoshkaConfig", "MatryoshkaSAE",
    "ReLUConfig", "ReLUSAE", "SparseActs", "TopKConfig", "TopKSAE", "auxk_loss", "batch_topk_select",
    "create_sae", "explained_variance", "fvu", "load_sae", "mse_loss", "read_provenance", "sae_class",
    "save_sae", "sparse_decode", "training_loss", "GradResult", "compute_grads", "STEP_METHODS",
    "StepWorkspace", "bf16_matmul_is_fast", "fast_grads",
]
