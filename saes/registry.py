"""Architecture name -> SAE class. The name is what `cfg.json` records (convention 10)."""

from __future__ import annotations

from saes.base import SAE
from saes.batchtopk import BatchTopKSAE
from saes.matryoshka import MatryoshkaSAE
from saes.relu import ReLUSAE
from saes.threshold import JumpReLUSAE
from saes.topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.architecture: cls for cls in (TopKSAE, BatchTopKSAE, MatryoshkaSAE, JumpReLUSAE, ReLUSAE)
}
TRAINABLE = ("topk", "batchtopk", "matryoshka_batchtopk")


def sae_class(architecture: str) -> type[SAE]:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown SAE architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def create_sae(architecture: str, d_in: int, d_sae: int, **cfg_fields) -> SAE:
    """Build a freshly initialised SAE, e.g. `create_sae("topk", 512, 8192, k=32)`.

    `device`, `dtype` and `generator` are passed to the module; the rest go to its config."""
    module_kw = {key: cfg_fields.pop(key) for key in ("device", "dtype", "generator") if key in cfg_fields}
    cls = sae_class(architecture)
    return cls(cls.config_class(d_in=d_in, d_sae=d_sae, **cfg_fields), **module_kw)
