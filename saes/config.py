"""Small dataclass configs, one per architecture (design convention 2).

Each field is documented through `metadata["help"]`, which also becomes its CLI flag text.
Validation happens in `__post_init__` and names the offending field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from saes.validators import finite_number, one_of, require, whole_number


@dataclass
class SAEConfig:
    """Shape and input handling shared by every SAE architecture."""

    d_in: int = field(metadata={"help": "width of the activations the SAE reads (the model's d_model for resid hooks)"})
    d_sae: int = field(metadata={"help": "number of latents (dictionary size)"})
    apply_b_dec_to_input: bool = field(
        default=True, metadata={"help": "subtract b_dec from the input before encoding (SAELens convention)"}
    )
    d_out: int | None = field(
        default=None,
        metadata={"help": "transcoder: width of the target it predicts (another hook's activations); "
                          "none: an SAE, reconstructing its own input", "cli": False},
    )
    skip_connection: bool = field(
        default=False,
        metadata={"help": "transcoder only: add a learned linear skip term W_skip x (a skip transcoder)", "cli": False},
    )
    metadata: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "SAELens metadata (model_name, hook_name, context_size, ...)", "cli": False},
    )

    def __post_init__(self) -> None:
        whole_number("", "d_in", self.d_in)
        whole_number("", "d_sae", self.d_sae)
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        if self.d_out is not None:
            whole_number("", "d_out", self.d_out)
            if self.apply_b_dec_to_input:  # b_dec lives in the target's space, not the input's
                raise ValueError("a transcoder (d_out set) reads its input uncentred: set apply_b_dec_to_input=False")
        elif self.skip_connection:
            raise ValueError("skip_connection needs a transcoder: set d_out (the target's width) or drop it")

    @property
    def is_transcoder(self) -> bool:
        """Predicts another hook's activations (d_out set) instead of reconstructing its input."""
        return self.d_out is not None


@dataclass
class ReLUConfig(SAEConfig):
    """Standard ReLU SAE (L1-trained). Supported for loading pretrained SAEs."""


@dataclass
class GatedConfig(SAEConfig):
    """Gated SAE (Rajamanoharan et al. 2024; SAELens's "gated"), loaded in its threshold form
    (`saes/gated.py`). Supported for loading pretrained SAEs; not trained here."""


SPARSITY_LOSS_MODES = ("step", "tanh")


@dataclass
class JumpReLUConfig(SAEConfig):
    """JumpReLU SAE: a latent fires when its pre-activation exceeds its own learned threshold.

    The training fields are SAELens's (JumpReLUTrainingSAEConfig), with its names and defaults
    except the initial threshold (ours is in the units of the trainer's scaled inputs); they
    change how the SAE trains, never what a trained one computes."""

    jumprelu_init_threshold: float = field(
        default=1.0, metadata={"help": "JumpReLU: initial threshold of every latent, in the trainer's units (inputs "
                                       "scaled to E||x|| = sqrt(d_in): a random direction's pre-activation has std "
                                       "about 1; SAELens's default 0.01 is for its unscaled inputs); scaled with the "
                                       "encoder's initial scale"})
    jumprelu_init_firing_rate: float = field(
        default=0.0, metadata={"help": "JumpReLU: a fresh run sets each latent's initial threshold so that it fires "
                                         "on this fraction of the held-out rows (then jumprelu_init_threshold is "
                                         "unused); 0: every latent starts at jumprelu_init_threshold"})
    jumprelu_bandwidth: float = field(
        default=0.05, metadata={"help": "JumpReLU: width of the rectangle kernel of the straight-through threshold "
                                        "gradient (pre-activations within bandwidth/2 of a threshold move it)"})
    jumprelu_sparsity_loss_mode: Literal["step", "tanh"] = field(
        default="step", metadata={"help": "JumpReLU sparsity penalty: step (L0, DeepMind / Gemma Scope) or tanh "
                                          "(sum of tanh(jumprelu_tanh_scale x act x ||W_dec row||), Anthropic 2025)"})
    l0_coefficient: float = field(
        default=1.0, metadata={"help": "JumpReLU: coefficient of the sparsity penalty (after its warm-up)"})
    l0_warm_up_steps: int = field(
        default=0, metadata={"help": "JumpReLU: steps over which the sparsity coefficient rises linearly from 0"})
    jumprelu_tanh_scale: float = field(
        default=4.0, metadata={"help": "JumpReLU, tanh penalty: scale inside the tanh"})
    jumprelu_ste_to_input: bool = field(
        default=False, metadata={"help": "JumpReLU: the straight-through estimate reaches the pre-activations (and so "
                                         "the encoder) too, not only the thresholds (false: DeepMind; true: Anthropic)"})
    pre_act_loss_coefficient: float = field(
        default=0.0, metadata={"help": "JumpReLU: coefficient of Anthropic's pre-activation loss, which pulls dead "
                                       "latents' pre-activations up to their thresholds (0: off; Anthropic: 3e-6)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        finite_number("JumpReLUConfig", "jumprelu_init_threshold", self.jumprelu_init_threshold, lo=0.0)
        finite_number("JumpReLUConfig", "jumprelu_init_firing_rate", self.jumprelu_init_firing_rate, lo=0.0)
        require(self.jumprelu_init_firing_rate < 1, f"JumpReLUConfig.jumprelu_init_firing_rate must be below 1 (a "
                f"fraction of rows); got {self.jumprelu_init_firing_rate!r}", field="jumprelu_init_firing_rate")
        finite_number("JumpReLUConfig", "jumprelu_bandwidth", self.jumprelu_bandwidth, lo=0.0)
        require(self.jumprelu_bandwidth > 0, f"JumpReLUConfig.jumprelu_bandwidth must be positive; got "
                f"{self.jumprelu_bandwidth!r}", field="jumprelu_bandwidth")
        one_of("JumpReLUConfig", "jumprelu_sparsity_loss_mode", self.jumprelu_sparsity_loss_mode, SPARSITY_LOSS_MODES)
        finite_number("JumpReLUConfig", "l0_coefficient", self.l0_coefficient, lo=0.0)
        whole_number("JumpReLUConfig", "l0_warm_up_steps", self.l0_warm_up_steps, minimum=0)
        finite_number("JumpReLUConfig", "jumprelu_tanh_scale", self.jumprelu_tanh_scale, lo=0.0)
        finite_number("JumpReLUConfig", "pre_act_loss_coefficient", self.pre_act_loss_coefficient, lo=0.0)
        require(isinstance(self.jumprelu_ste_to_input, bool), f"JumpReLUConfig.jumprelu_ste_to_input must be true or "
                f"false; got {self.jumprelu_ste_to_input!r}", field="jumprelu_ste_to_input")

    def sparsity_coefficient(self, step: int) -> float:
        """The penalty's coefficient at optimiser step `step` (0-based): linear from 0 over
        l0_warm_up_steps, as SAELens's CoefficientScheduler (step s uses s / warm-up)."""
        if step >= self.l0_warm_up_steps:
            return self.l0_coefficient
        return self.l0_coefficient * step / self.l0_warm_up_steps


@dataclass
class TopKConfig(SAEConfig):
    """TopK SAE: exactly the k largest pre-activations per token fire."""

    k: int = field(default=32, metadata={"help": "active latents per token"})

    def __post_init__(self) -> None:
        super().__post_init__()
        whole_number("", "k", self.k)
        if self.k > self.d_sae:
            raise ValueError(f"k ({self.k}) must not exceed d_sae ({self.d_sae}); lower k or widen the SAE")


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK SAE: while training, the k*B largest pre-activations of a batch of B tokens fire;
    for inference, a per-latent threshold (learned during training) replaces the batch selection."""


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka BatchTopK SAE: nested prefixes of the latents each reconstruct the input."""

    matryoshka_widths: list[int] = field(
        default_factory=list,
        metadata={
            "help": "cumulative prefix widths, strictly increasing, ending at d_sae "
            "(e.g. 128,512,2048); empty picks ~4x steps"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        widths = [int(w) for w in self.matryoshka_widths] or default_matryoshka_widths(self.d_sae)
        if widths[-1] != self.d_sae:
            raise ValueError(
                f"matryoshka_widths must end at d_sae ({self.d_sae}), got {widths}; append {self.d_sae}"
            )
        if any(w <= 0 for w in widths) or any(b <= a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"matryoshka_widths must be positive and strictly increasing, got {widths}")
        self.matryoshka_widths = widths


def default_matryoshka_widths(d_sae: int) -> list[int]:
    """Prefixes growing 4x at a time from d_sae/64 up to d_sae (at least one inner level)."""
    widths = [d_sae]
    while widths[0] // 4 >= max(16, d_sae // 64):
        widths.insert(0, widths[0] // 4)
    if len(widths) == 1 and d_sae >= 2:
        widths.insert(0, d_sae // 2)
    return widths
