"""The SAE base module: raw parameters, encode / decode / forward, and what an architecture is.

Shape key: B rows (tokens; leading dims are flattened into B), D d_in, F d_sae, N nonzeros, M latents read,
O d_out (a transcoder's target width; d_in for an SAE).

Parameters use SAELens's names and layouts (design convention 5):
`W_enc [D, F]`, `b_enc [F]`, `W_dec [F, D]`, `b_dec [D]`. Device and dtype come from the
parameters; inputs are cast to them. `forward` changes nothing: no counters, no threshold
updates (the trainer owns those).

An architecture is one subclass (plus its line in `saes/registry.py`). Everything the rest of the
code needs to know about it is asked of the class, never decided by its name or type elsewhere:

| what | member | default here |
|---|---|---|
| name recorded in cfg.json, other names accepted | `architecture`, `aliases` | - |
| its config dataclass | `config_class` | `SAEConfig` |
| may be trained (`saesteer train`) | `trainable` | False |
| inference selection (a row's latents never depend on other rows) | `select(pre_BF)` | abstract |
| how `select` decides, for readers of a few latents (steering) | `encoding_rule` | "generic" |
| training selection; `group`: the ranks of a data-parallel global batch | `training_select(pre_BF, group)` | `select` |
| nested levels and their reconstructions (Matryoshka) | `levels`, `level_reconstructions` | None, [full] |
| the objective's auxiliary term | `auxiliary_loss` | AuxK |
| a sparsity penalty in the objective (JumpReLU), by optimiser step | `sparsity_penalty` | None |
| which hand-written fast step applies ("topk", "batch_topk", "jumprelu") | `training_rule` | "generic" (autograd only) |
| state updated after each optimiser step (BatchTopK thresholds) | `update_inference_form_` | nothing |
| parameters the optimiser steps at a step size of their own (learned thresholds) | `own_lr_parameters` | () |
| run-wide training settings its training reads, of those only some architectures read | `train_settings` | AuxK's |
| SAELens cfg.json: architecture saved, its fields, training details | `saelens_architecture`, `saelens_fields`, `training_details` | own name, {}, {} |
| SAELens cfg.json back into config fields | `config_fields_from_saelens` | {} |
| SAELens tensors in this class's form, before they are read (Gated's b_gate, b_mag, r_mag) | `saelens_inference_weights` | as given |
| tensors beyond the four parameters (JumpReLU's `threshold`) | buffers, `load_saelens_tensors_` | none |
| SAELens's `rescale_acts_by_decoder_norm` folded into the weights | `fold_selection_decoder_norm_` | `fold_decoder_norm_` |

Transcoders are a mode of every architecture, not classes of their own: with `cfg.d_out` set the
SAE reads its input at one hook and predicts another hook's activations (the target). Encoding and
selection are the architecture's; only the decoder's width (`W_dec [F, O]`, `b_dec [O]`), the
input centring (none: b_dec lives in the target's space) and, with `cfg.skip_connection`, a
learned linear term `W_skip [O, D]` (prediction = decode(latents) + x @ W_skip.T) change.
`decode` never includes the skip term (it has no input); `predict(x, acts)` / `forward` do.

The inference form is what `select` computes and what is saved: BatchTopK and Matryoshka train
with `training_select` (over the batch) and infer with their thresholds, saved as SAELens's
"jumprelu" with `training_architecture` recording the class (`saelens_architecture`).

What the rules promise: "threshold" (`encoding_rule`) means a latent fires where its own
pre-activation exceeds max(threshold, 0), read from the `threshold` buffer; "relu" where it
exceeds 0; "topk" and the training rules "topk" / "batch_topk" select the `cfg.k` largest per
row / k * rows largest in the batch (values relu'd for "topk"), as TopKSAE / BatchTopKSAE do;
the training rule "jumprelu" is JumpReLUSAE's objective (learned thresholds, sparsity penalty).

Descriptors never go stale: a subclass that redefines how latents are selected (`select`,
`pre_activations`, `encode_with_pre`) without declaring its own `encoding_rule` and
`saelens_architecture` gets "generic" and its own name; one that redefines a piece of the
training objective without declaring `training_rule` gets "generic" (the fast step refuses it
and training uses autograd). A specialised path never runs for someone else's rule.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import torch
from jaxtyping import Float
from torch import Tensor, nn

from saes.config import SAEConfig
from saes.losses import auxk_loss
from saes.sparse import DecodeMethod, SparseActs, sparse_decode
from saes.topk_select import BatchGroup

EncodingRule = Literal["threshold", "relu", "topk", "generic"]
TrainingRule = Literal["topk", "batch_topk", "jumprelu", "generic"]

# members whose redefinition changes what `encoding_rule` / `training_rule` describe
_ENCODING_MEMBERS = ("select", "pre_activations", "encode_with_pre")
_TRAINING_MEMBERS = _ENCODING_MEMBERS + ("training_select", "level_reconstructions", "auxiliary_loss", "sparsity_penalty")
# members that read the settings of `train_settings` (aux_coef / k_aux, threshold_lr)
_SETTINGS_MEMBERS = ("auxiliary_loss", "update_inference_form_")


class Encoding(NamedTuple):
    """Active latents of each row and the pre-activations they were chosen from."""

    acts: SparseActs
    pre_BF: Tensor


class SAEOutput(NamedTuple):
    recon: Tensor  # [..., D], same leading shape as the input
    acts: SparseActs  # rows flattened
    pre_BF: Tensor


class Reducer(Protocol):
    """Sums and minima over the ranks of a data-parallel run (training.collectives.Collectives)."""

    def sum_(self, t: Tensor) -> Tensor: ...

    def min_(self, t: Tensor) -> Tensor: ...


class SAE(nn.Module):
    """Base class. Subclasses set `architecture`, `config_class` and implement `select`; the
    table in the module docstring lists everything else they may say about themselves."""

    architecture: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    trainable: ClassVar[bool] = False
    encoding_rule: ClassVar[EncodingRule] = "generic"
    training_rule: ClassVar[TrainingRule] = "generic"
    saelens_architecture: ClassVar[str] = ""  # "" = `architecture`
    # names of parameters the trainer steps at their own learning rate (TrainConfig.jumprelu_threshold_lr),
    # not the weights': learned thresholds, which must travel a pre-activation-sized distance (JumpReLU's)
    own_lr_parameters: ClassVar[tuple[str, ...]] = ()
    # which of the TrainConfig fields that only some architectures read (training/config.py
    # ARCHITECTURE_SETTINGS) this one's training reads: a resume compares only those. Here AuxK's
    # (the default `auxiliary_loss`); jumprelu_threshold_lr goes with `own_lr_parameters`. None:
    # not known (a subclass that redefines a member they feed without saying), every one is compared
    train_settings: ClassVar[frozenset[str] | None] = frozenset({"aux_coef", "k_aux"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if any(m in own for m in _ENCODING_MEMBERS):
            if "encoding_rule" not in own:
                cls.encoding_rule = "generic"
            if "saelens_architecture" not in own:
                cls.saelens_architecture = ""
        if any(m in own for m in _TRAINING_MEMBERS) and "training_rule" not in own:
            cls.training_rule = "generic"
        if any(m in own for m in _SETTINGS_MEMBERS) and "train_settings" not in own:
            cls.train_settings = None

    @classmethod
    def saved_architecture(cls) -> str:
        """The architecture cfg.json names (the inference form's)."""
        return cls.saelens_architecture or cls.architecture

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
        D, Fdim, O = cfg.d_in, cfg.d_sae, cfg.d_out or cfg.d_in
        kw = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.empty(D, Fdim, **kw))
        self.b_enc = nn.Parameter(torch.zeros(Fdim, **kw))
        self.W_dec = nn.Parameter(torch.empty(Fdim, O, **kw))
        self.b_dec = nn.Parameter(torch.zeros(O, **kw))
        self.W_skip = nn.Parameter(torch.zeros(O, D, **kw)) if cfg.skip_connection else None
        self.reset_parameters(generator)

    # -- shape helpers -------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of what the decoder writes: the target's (transcoder) or the input's (SAE)."""
        return self.cfg.d_out or self.cfg.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.is_transcoder

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Unit-norm random decoder rows, encoder = decoder transpose, zero biases (a transcoder
        whose widths differ: an independent unit-norm encoder; W_skip zero, as SAELens)."""
        W = torch.randn(self.d_sae, self.d_out, generator=generator, dtype=torch.float32, device="cpu")
        W /= W.norm(dim=1, keepdim=True)
        self.W_dec.copy_(W)
        if self.d_out == self.d_in:
            self.W_enc.copy_(W.T)
        else:
            E = torch.randn(self.d_sae, self.d_in, generator=generator, dtype=torch.float32, device="cpu")
            self.W_enc.copy_((E / E.norm(dim=1, keepdim=True)).T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()

    def _rows(self, x: Tensor) -> Tensor:
        """Flatten leading dims to [B, D] in the SAE's dtype, checking the width."""
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"input has width {x.shape[-1]} but this SAE reads d_in={self.d_in}; "
                f"check the hook point (SAE hook: {self.cfg.metadata.get('hook_name', 'unknown')})"
            )
        return x.reshape(-1, self.d_in).to(self.dtype)

    def _target_rows(self, y: Tensor) -> Tensor:
        """The target as [B, O] rows in the SAE's dtype (a transcoder's other hook; an SAE's input)."""
        if y.shape[-1] != self.d_out:
            raise ValueError(
                f"target has width {y.shape[-1]} but this transcoder predicts d_out={self.d_out}; check the target "
                f"hook (recorded: {self.cfg.metadata.get('hook_name_out', 'unknown')})"
            )
        return y.reshape(-1, self.d_out).to(self.dtype)

    def skip_term(self, x_BD: Tensor) -> Tensor | None:
        """A skip transcoder's linear term x @ W_skip.T [B, O]; None without a skip connection."""
        return None if self.W_skip is None else x_BD @ self.W_skip.T

    # -- encode --------------------------------------------------------------------------
    def pre_activations(self, x_BD: Tensor) -> Tensor:
        sae_in_BD = x_BD - self.b_dec if self.cfg.apply_b_dec_to_input else x_BD
        return sae_in_BD @ self.W_enc + self.b_enc

    def select(self, pre_BF: Tensor) -> SparseActs:  # pragma: no cover - abstract
        """Inference selection: which latents of each row fire, and their values."""
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
    ) -> Float[Tensor, "... d_out"]:
        """Reconstruction (a transcoder: its prediction, less any skip term) from sparse (rows) or
        dense ([..., F]) activations."""
        if isinstance(acts, SparseActs):
            return sparse_decode(acts, self.W_dec, self.b_dec, method)
        if acts.shape[-1] != self.d_sae:
            raise ValueError(f"activations have width {acts.shape[-1]}, expected d_sae={self.d_sae}")
        return acts.to(self.dtype) @ self.W_dec + self.b_dec

    def predict(self, x_BD: Tensor, acts: SparseActs, method: DecodeMethod = "embedding_bag") -> Tensor:
        """The output [B, O] from input rows x_BD and their latents: decode + the skip term (if any)."""
        out_BO = self.decode(acts, method=method)
        skip_BO = self.skip_term(self._rows(x_BD))
        return out_BO if skip_BO is None else out_BO + skip_BO

    def forward(self, x: Float[Tensor, "... d_in"], decode_method: DecodeMethod = "embedding_bag") -> SAEOutput:
        enc = self.encode_with_pre(x)
        recon_BO = self.predict(x, enc.acts, method=decode_method)
        return SAEOutput(recon_BO.reshape(x.shape[:-1] + (self.d_out,)), enc.acts, enc.pre_BF)

    # -- training --------------------------------------------------------------------------
    def training_select(self, pre_BF: Tensor, group: BatchGroup | None = None) -> SparseActs:
        """The selection while training. `group` (data parallel): the ranks whose batches form one
        global batch; an architecture whose selection looks at other rows selects over it."""
        return self.select(pre_BF)

    @property
    def levels(self) -> list[int] | None:
        """Cumulative widths of nested latent prefixes, each trained to reconstruct on its own
        (Matryoshka); None: one level, the whole dictionary."""
        return None

    def level_reconstructions(self, acts: SparseActs, method: DecodeMethod = "embedding_bag") -> list[Tensor]:
        """Reconstruction [B, D] from each level, innermost first; the last is the full one."""
        return [self.decode(acts, method=method)]

    def auxiliary_loss(
        self, pre_BF: Tensor, residual_BD: Tensor, dead_mask_F: Tensor | None, k_aux: int,
        method: DecodeMethod = "embedding_bag",
    ) -> Tensor:
        """The objective's auxiliary term before its coefficient: AuxK (the top-k_aux dead latents
        reconstruct the detached residual of the live ones)."""
        return auxk_loss(pre_BF, residual_BD, self.W_dec, dead_mask_F, k_aux, method)

    def sparsity_penalty(self, pre_BF: Tensor, acts: SparseActs, dead_mask_F: Tensor | None, step: int) -> Tensor | None:
        """A term the objective adds as it is (its coefficient inside), for architectures whose
        sparsity is trained rather than imposed (JumpReLU); `step`: the optimiser step, 0-based,
        for coefficients with a warm-up. None: no such term (TopK, BatchTopK: k imposes it)."""
        return None

    @torch.no_grad()
    def update_inference_form_(
        self, pre_BF: Tensor, acts: SparseActs, *, lr: float, above_threshold_F: Tensor | None = None,
        reduce: Reducer | None = None,
    ) -> None:
        """After each optimiser step: bring state that gradients do not train up to date with the
        training selection `acts` made from `pre_BF` (BatchTopK: its inference thresholds).
        `reduce`: sums/minima over ranks in data-parallel training. Nothing to do here."""

    # -- SAELens cfg.json ------------------------------------------------------------------
    def saelens_fields(self) -> dict[str, Any]:
        """This architecture's own top-level cfg.json fields (e.g. TopK's k)."""
        return {}

    def training_details(self) -> dict[str, Any]:
        """`metadata.training_architecture_details` when the saved architecture is not this one."""
        return {}

    @classmethod
    def config_fields_from_saelens(cls, cfg: dict[str, Any], details: dict[str, Any], source: str) -> dict[str, Any]:
        """Config fields of this architecture from a SAELens cfg.json (`details`: its
        training_architecture_details); errors are ValueErrors naming the missing field."""
        return {}

    @classmethod
    def saelens_inference_weights(cls, weights: dict[str, Tensor], source: str) -> dict[str, Tensor]:
        """SAELens's tensors of this architecture as this class holds them (W_enc, b_enc, W_dec, b_dec
        and its own), before shapes are checked; errors are ValueErrors naming the tensor. As given here."""
        return weights

    def load_saelens_tensors_(self, weights: dict[str, Tensor], source: str) -> None:
        """Copy the tensors beyond W_enc, b_enc, W_dec, b_dec from SAELens weights (none here)."""

    @torch.no_grad()
    def fold_selection_decoder_norm_(self) -> None:
        """SAELens's `rescale_acts_by_decoder_norm`: selection ran on pre * ||W_dec row||; fold the
        norms into the weights (exact for this SAE's selection)."""
        self.fold_decoder_norm_()

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
    def fold_activation_scale_(self, scale: float, target_scale: float | None = None) -> None:
        """Fold input (and target) scaling factors into the weights.

        Trained on `scale * x` predicting `target_scale * y` (an SAE: y = x, one scale), the SAE
        afterwards reads raw `x` and predicts raw `y`, with identical latent activations:
        W_enc *= scale, W_dec /= target_scale, b_dec /= target_scale, W_skip *= scale / target_scale."""
        target_scale = scale if target_scale is None else target_scale
        for s in (scale, target_scale):
            if not (s > 0 and float(s) != float("inf")):
                raise ValueError(f"activation scale must be positive and finite, got {s}")
        self.W_enc.mul_(scale)
        self.W_dec.div_(target_scale)
        self.b_dec.div_(target_scale)
        if self.W_skip is not None:
            self.W_skip.mul_(scale / target_scale)

    @torch.no_grad()
    def fold_input_whitening_(self, mean_D: Tensor, matrix_DD: Tensor, inverse_DD: Tensor) -> None:
        """Fold an affine whitening into the weights: trained on z = (x - mean) @ M, reconstructions
        mapped back as z_hat @ M^-1 + mean (SAELens's `covariance_whitening`), the SAE afterwards reads
        raw x with the same pre-activations (thresholds stay). SAELens's `fold_activation_whitening`
        arithmetic, in the statistics' precision: W_enc <- M W_enc, b_enc -= mean W_enc (only without
        b_dec centring, which the new b_dec does), W_dec <- W_dec M^-1, b_dec <- b_dec M^-1 + mean."""
        if self.is_transcoder:
            raise ValueError("a transcoder's whitening is not folded (its target's is not known)")
        dtype = torch.promote_types(self.dtype, matrix_DD.dtype)
        mean_D, M_DD, Minv_DD = (t.to(self.device, dtype) for t in (mean_D, matrix_DD, inverse_DD))
        self.W_enc.copy_(M_DD @ self.W_enc.to(dtype))
        if not self.cfg.apply_b_dec_to_input:
            self.b_enc.sub_(mean_D @ self.W_enc.to(dtype))
        self.W_dec.copy_(self.W_dec.to(dtype) @ Minv_DD)
        self.b_dec.copy_(self.b_dec.to(dtype) @ Minv_DD + mean_D)

    @torch.no_grad()
    def fit_initial_thresholds_(self, sample_BD: Tensor) -> None:
        """A fresh training run's hook, before the encoder's initial scale is fitted: set starting
        values that depend on the (scaled) held-out rows. Nothing here (JumpReLU sets thresholds)."""

    @torch.no_grad()
    def scale_encoder_(self, factor: float) -> None:
        """Multiply W_enc and b_enc by `factor`, and thresholds with them (the pre-activations scale
        by `factor`, so which entries fire does not change)."""
        self.W_enc.mul_(factor)
        self.b_enc.mul_(factor)
        self._scale_thresholds_(torch.full((self.d_sae,), float(factor), device=self.device, dtype=self.dtype))

    def _scale_thresholds_(self, factor_F: Tensor) -> None:
        """Threshold encoders rescale their thresholds with the pre-activations."""

    def extra_repr(self) -> str:
        out = f", d_out={self.d_out}, skip={self.W_skip is not None}" if self.is_transcoder else ""
        return f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}{out}"
