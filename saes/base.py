"""The SAE base module: raw parameters, encode / decode / forward.

Shape key: B rows (tokens; leading dims are flattened into B), D d_in, F d_sae, N nonzeros.

Parameters use SAELens's names and layouts (design convention 5):
`W_enc [D, F]`, `b_enc [F]`, `W_dec [F, D]`, `b_dec [D]`. Subclasses only decide which latents
fire (`select`). Device and dtype come from the parameters; inputs are cast to them.
`forward` changes nothing: no counters, no threshold updates (the trainer owns those).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor, nn

from saes.config import SAEConfig
from saes.sparse import DecodeMethod, SparseActs, sparse_decode


class Encoding(NamedTuple):
    """Active latents of each row and the pre-activations they were chosen from."""

    acts: SparseActs
    pre_BF: Tensor


class SAEOutput(NamedTuple):
    recon: Tensor  # [..., D], same leading shape as the input
    acts: SparseActs  # rows flattened
    pre_BF: Tensor


class SAE(nn.Module):
    """Base class. Subclasses set `architecture`, `config_class` and implement `select`."""

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SAEConfig]] = SAEConfig

    def __init__(
        self,
        cfg: SAEConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        D, Fdim = cfg.d_in, cfg.d_sae
        kw = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.empty(D, Fdim, **kw))
        self.b_enc = nn.Parameter(torch.zeros(Fdim, **kw))
        self.W_dec = nn.Parameter(torch.empty(Fdim, D, **kw))
        self.b_dec = nn.Parameter(torch.zeros(D, **kw))
        self.reset_parameters(generator)

    # -- shape helpers -------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Unit-norm random decoder rows, encoder = decoder transpose, zero biases."""
        W = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=torch.float32, device="cpu")
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec.copy_(W)
        self.W_enc.copy_(W.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def _rows(self, x: Tensor) -> Tensor:
        """Flatten leading dims to [B, D] in the SAE's dtype, checking the width."""
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"input has width {x.shape[-1]} but this SAE reads d_in={self.d_in}; "
                f"check the hook point (SAE hook: {self.cfg.metadata.get('hook_name', 'unknown')})"
            )
        return x.reshape(-1, self.d_in).to(self.dtype)

    # -- encode --------------------------------------------------------------------------
    def pre_activations(self, x_BD: Tensor) -> Tensor:
        sae_in_BD = x_BD - self.b_dec if self.cfg.apply_b_dec_to_input else x_BD
        return sae_in_BD @ self.W_enc + self.b_enc

    def select(self, pre_BF: Tensor) -> SparseActs:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_with_pre(self, x: Float[Tensor, "... d_in"]) -> Encoding:
        """Inference encoding of every row (a row's latents never depend on other rows)."""
        pre_BF = self.pre_activations(self._rows(x))
        return Encoding(self.select(pre_BF), pre_BF)

    def encode_sparse(self, x: Float[Tensor, "... d_in"]) -> SparseActs:
        return self.encode_with_pre(x).acts

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Dense latent activations with the input's leading shape."""
        return self.encode_sparse(x).to_dense().reshape(*x.shape[:-1], self.d_sae)

    # -- decode --------------------------------------------------------------------------
    def decode(
        self, acts: SparseActs | Float[Tensor, "... d_sae"], method: DecodeMethod = "embedding_bag"
    ) -> Float[Tensor, "... d_in"]:
        """Reconstruction from sparse (rows) or dense ([..., F]) activations."""
        if isinstance(acts, SparseActs):
            return sparse_decode(acts, self.W_dec, self.b_dec, method)
        if acts.shape[-1] != self.d_sae:
            raise ValueError(f"activations have width {acts.shape[-1]}, expected d_sae={self.d_sae}")
        return acts.to(self.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"], decode_method: DecodeMethod = "embedding_bag") -> SAEOutput:
        enc = self.encode_with_pre(x)
        recon_BD = self.decode(enc.acts, method=decode_method)
        return SAEOutput(recon_BD.reshape(x.shape[:-1] + (self.d_in,)), enc.acts, enc.pre_BF)

    # -- weight maintenance ----------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self, eps: float = 1e-8) -> Tensor:
        """Scale decoder rows to unit norm; return the old norms [F].

        The encoder is not rescaled: call this during training (where the optimizer adapts),
        or use `fold_decoder_norm_` to keep outputs unchanged."""
        norms_F = self.W_dec.norm(dim=1).clamp_min(eps)
        self.W_dec.div_(norms_F[:, None])
        return norms_F

    @torch.no_grad()
    def fold_decoder_norm_(self) -> None:
        """Unit-norm decoder rows with the norm moved into the encoder: activations scale by
        the norm, reconstructions stay the same (threshold encoders scale thresholds too)."""
        norms_F = self.normalize_decoder_()
        self.W_enc.mul_(norms_F)
        self.b_enc.mul_(norms_F)
        self._scale_thresholds_(norms_F)

    @torch.no_grad()
    def fold_activation_scale_(self, scale: float) -> None:
        """Fold an input scaling factor into the weights.

        Trained on `scale * x`, the SAE afterwards reads raw `x` and reconstructs raw `x`,
        with identical latent activations: W_enc *= scale, W_dec /= scale, b_dec /= scale."""
        if not (scale > 0 and float(scale) != float("inf")):
            raise ValueError(f"activation scale must be positive and finite, got {scale}")
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def _scale_thresholds_(self, factor_F: Tensor) -> None:
        """Threshold encoders rescale their thresholds with the pre-activations."""

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}"
