"""Configs of an SAE training run: one small dataclass per concern (design convention 2).

    SAESpec          one SAE to train (architecture, width, k); a run trains one or several
    OptimConfig      Adam, learning-rate schedule, gradient clipping
    TrainConfig      the run: tokens, batch size, seed, step method, dead latents, init, guards
    CheckpointConfig how often to checkpoint and how many to keep
    EvalConfig       evaluation during and after training
    LogConfig        history, progress bar, wandb
    RunConfig        all of the above (what a checkpoint records and a resume compares)

Every field has `metadata["help"]`, which is also its CLI flag text (`saesteer train --help`).
This module imports no torch, so the CLI stays light.

Resume rules: a checkpoint stores the RunConfig it was made with. A resume whose config differs
is refused, naming every differing field, except for the fields in `RESUMABLE_FIELDS`, which
may change (they do not alter what the optimiser sees, or - total_tokens - extend/shorten the
run on purpose).

One module over 450 lines on purpose: RunConfig is what a checkpoint records and a resume compares
field by field, so every section it nests, and that comparison, stay beside it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from saes.validators import finite_number, require, whole_number


# SAESpec fields that go to the SAE's config where its architecture's config has them; an
# architecture without one (JumpReLU has no k, TopK no widths) neither records nor compares it
ARCHITECTURE_FIELDS = ("k", "matryoshka_widths")
DEFAULT_K = 32  # SAESpec.k of an architecture that takes k, when none is given
# the other fields of an architecture's config go through SAESpec.options (e.g. JumpReLU's l0_coefficient)

# TrainConfig fields that only some architectures read (each class says which: `SAE.train_settings`,
# and `own_lr_parameters` for jumprelu_threshold_lr); a resume compares those its run's SAEs read
ARCHITECTURE_SETTINGS = ("aux_coef", "k_aux", "threshold_lr", "jumprelu_threshold_lr")

# Fields that may differ between a checkpoint's config and the resuming config.
RESUMABLE_FIELDS = (
    "train.total_tokens",  # extend or shorten the run (the LR schedule is re-planned over the new total)
    "train.max_nonfinite",
    "train.num_threads",  # bit-identical resume on CPU needs the same thread count, but it is allowed
    "train.device",
    "train.encoder_init_scale",  # used only when a run starts; a resume loads the weights
    "train.init_from_allow_mismatch",  # likewise (train.init_from itself may not change: a different source is refused)
    "checkpoint.*",
    "eval.*",
    "log.*",
)


@dataclass
class SAESpec:
    """One SAE to train. Several specs train in one pass over the same batches."""

    architecture: str = field(
        default="topk",
        metadata={"help": "a trainable architecture of saes/registry.py (shipped: topk, batchtopk, "
                          "matryoshka_batchtopk, jumprelu; alias: matryoshka)"},
    )
    d_sae: int = field(default=4096, metadata={"help": "number of latents"})
    k: int | None = field(
        default=None,
        metadata={"help": f"active latents per token (BatchTopK: on average over the batch); none: {DEFAULT_K} for an "
                          f"architecture that takes k; an architecture without k (JumpReLU) refuses one"},
    )
    matryoshka_widths: list[int] = field(
        default_factory=list,
        metadata={"help": "Matryoshka only: cumulative prefix widths ending at d_sae (empty: ~4x steps)"},
    )
    lr: float | None = field(
        default=None, metadata={"help": "learning rate of this SAE (none: OptimConfig.lr, or its width rule)"}
    )
    name: str = field(default="", metadata={"help": "folder name of this SAE (empty: <arch>_k<k>_f<d_sae>, "
                                                    "<arch>_f<d_sae> for an architecture without k)"})
    skip: bool = field(
        default=False,
        metadata={"help": "transcoder runs (DataConfig.target_hook) only: a skip transcoder, with a learned linear "
                          "term W_skip x"},
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "the architecture's other config fields, e.g. JumpReLU's l0_coefficient, "
                          "l0_warm_up_steps, jumprelu_bandwidth (see saes/config.py)"},
    )

    def __post_init__(self) -> None:
        self.architecture = trainable_architecture(self.architecture)
        whole_number("SAESpec", "d_sae", self.d_sae)
        has_k = takes_k(self.architecture)
        if has_k:
            self.k = DEFAULT_K if self.k is None else self.k
            whole_number("SAESpec", "k", self.k)
            require(self.k <= self.d_sae, f"SAESpec.k ({self.k}) must not exceed d_sae ({self.d_sae}); lower k or "
                                          f"widen the SAE")
        else:  # meaningless for it: refused when given (a record saved with the old default 32: `spec_record`)
            require(self.k is None, f"SAESpec.k is {self.k} but architecture {self.architecture!r} has no k (it "
                                    f"sets its own sparsity); drop k from this SAE's spec", field="k")
        self.matryoshka_widths = [int(w) for w in self.matryoshka_widths]
        if self.matryoshka_widths and not takes_levels(self.architecture):
            from saes.registry import trainable_architectures

            with_levels = [a for a in trainable_architectures() if takes_levels(a)]
            raise ValueError(
                f"SAESpec.matryoshka_widths is set but architecture {self.architecture!r} has no levels; "
                f"use architecture={' or '.join(with_levels)} or drop the widths"
            )
        if self.lr is not None:
            finite_number("SAESpec", "lr", self.lr, lo=0.0)
        self.options = dict(self.options or {})
        check_options(self.architecture, self.options, self.d_sae)
        if not self.name:
            base = f"{self.architecture}_k{self.k}_f{self.d_sae}" if has_k else f"{self.architecture}_f{self.d_sae}"
            self.name = base + ("_skip" if self.skip else "")
        require(
            all(c.isalnum() or c in "._-" for c in self.name) and not self.name.startswith("."),
            f"SAESpec.name {self.name!r} must use only letters, digits, '.', '_' and '-' (it names a folder)",
        )
        from saes.fileio import unportable_name

        why = unportable_name(self.name)
        require(why is None, f"SAESpec.name {self.name!r} cannot name a folder on every OS: {why}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as a config records it: without the `ARCHITECTURE_FIELDS` its architecture lacks."""
        return spec_record(dataclasses.asdict(self))

    def sae_config_fields(self) -> dict[str, Any]:
        """The spec's values of the config fields its architecture takes (`ARCHITECTURE_FIELDS`)."""
        taken = architecture_fields(self.architecture)
        return {**{name: getattr(self, name) for name in ARCHITECTURE_FIELDS if name in taken}, **self.options}


def trainable_architecture(name: str) -> str:
    """The registered name of a trainable architecture (an alias resolved); otherwise a
    ValueError naming SAESpec.architecture and the choices. Asks `saes.registry` (loads torch:
    only when a spec is built, never while the CLI parser is)."""
    from saes.registry import ALIASES, canonical_name, trainable_architectures

    choices = trainable_architectures()
    aliases = ", ".join(f"{alias} = {full}" for alias, full in ALIASES.items() if full in choices)
    require(canonical_name(name) in choices,
           f"SAESpec.architecture must be one of {', '.join(choices)}{f' (aliases: {aliases})' if aliases else ''}; "
           f"got {name!r}")
    return canonical_name(name)


def spec_record(spec: dict[str, Any]) -> dict[str, Any]:
    """A recorded SAESpec without the `ARCHITECTURE_FIELDS` its architecture does not take, e.g. the
    k=32 that JumpReLU specs recorded before they had none (an unknown architecture: as it is)."""
    try:
        taken = architecture_fields(spec["architecture"])
    except (KeyError, TypeError, ValueError):
        return spec
    return {key: value for key, value in spec.items() if key not in ARCHITECTURE_FIELDS or key in taken}


def option_fields(architecture: str) -> set[str]:
    """The config fields of an architecture that SAESpec.options sets: all but the shape and input
    handling every SAE shares (SAEConfig) and `ARCHITECTURE_FIELDS`."""
    from saes.config import SAEConfig
    from saes.registry import config_fields

    return config_fields(architecture) - {f.name for f in dataclasses.fields(SAEConfig)} - set(ARCHITECTURE_FIELDS)


def check_options(architecture: str, options: dict[str, Any], d_sae: int) -> None:
    """Unknown keys are refused naming the valid ones; values are checked by the architecture's
    config itself (its errors name the field; d_in is not known yet and no check reads it)."""
    valid = option_fields(architecture)
    unknown = sorted(set(options) - valid)
    require(not unknown, f"SAESpec.options: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a "
                         f"setting of architecture {architecture!r}"
                         + (f"; its settings: {', '.join(sorted(valid))}" if valid else " (it has none)"))
    if options:
        from saes.registry import sae_class

        cls = sae_class(architecture).config_class
        cls(d_in=1, d_sae=d_sae, **options, **({"k": 1} if takes_k(architecture) else {}))


def architecture_fields(architecture: str) -> set[str]:
    """Which of `ARCHITECTURE_FIELDS` an architecture's config takes."""
    from saes.registry import config_fields

    return config_fields(architecture) & set(ARCHITECTURE_FIELDS)


def takes_k(architecture: str) -> bool:
    """Whether a trainable architecture (or alias) takes SAESpec.k: code that builds specs for several
    architectures passes k only to those (SAESpec refuses a k JumpReLU would ignore)."""
    return "k" in architecture_fields(trainable_architecture(architecture))


def takes_levels(architecture: str) -> bool:
    """Whether a trainable architecture (or alias) takes SAESpec.matryoshka_widths (Matryoshka levels)."""
    return "matryoshka_widths" in architecture_fields(trainable_architecture(architecture))


@dataclass
class OptimConfig:
    """Adam, the learning-rate schedule and gradient clipping (shared by every SAE of the run)."""

    lr: float | None = field(
        default=None,
        metadata={"help": "peak learning rate (none: 2e-4 / sqrt(d_sae / 16384) per SAE, the sparsify rule)"},
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})
    warmup_frac: float = field(default=0.01, metadata={"help": "linear LR warmup over this fraction of the steps"})
    decay: Literal["linear", "cosine", "constant"] = field(
        default="linear", metadata={"help": "LR decay shape after decay_start_frac"}
    )
    decay_start_frac: float = field(default=0.8, metadata={"help": "fraction of the steps after which the LR decays"})
    final_lr_frac: float = field(default=0.0, metadata={"help": "LR at the last step as a fraction of the peak"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the gradient norm of each SAE to this (0: off)"})

    def __post_init__(self) -> None:
        if self.lr is not None:
            finite_number("OptimConfig", "lr", self.lr, lo=0.0)
        finite_number("OptimConfig", "adam_beta1", self.adam_beta1, 0.0, 1.0)
        finite_number("OptimConfig", "adam_beta2", self.adam_beta2, 0.0, 1.0)
        finite_number("OptimConfig", "adam_eps", self.adam_eps, lo=0.0)
        finite_number("OptimConfig", "warmup_frac", self.warmup_frac, 0.0, 1.0)
        finite_number("OptimConfig", "decay_start_frac", self.decay_start_frac, 0.0, 1.0)
        finite_number("OptimConfig", "final_lr_frac", self.final_lr_frac, 0.0, 1.0)
        finite_number("OptimConfig", "grad_clip", self.grad_clip, lo=0.0)
        require(self.decay in ("linear", "cosine", "constant"), f"OptimConfig.decay must be linear, cosine or constant; got {self.decay!r}")
        require(
            self.decay == "constant" or self.decay_start_frac >= self.warmup_frac,
            f"OptimConfig.decay_start_frac ({self.decay_start_frac}) must not be before the end of the warmup "
            f"(warmup_frac={self.warmup_frac})",
        )


@dataclass
class TrainConfig:
    """The run: how many tokens, batch size, seed, step method, dead latents, initialisation."""

    total_tokens: int = field(default=20_000_000, metadata={"help": "training tokens (activation rows) in all"})
    batch_size: int = field(
        default=4096, metadata={"help": "tokens per optimiser step, over all ranks when data parallel (the global batch)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the SAE initialisation (and the reader's shuffle, from the CLI)"})
    step_method: str = field(
        default="auto",
        metadata={
            "help": "gradient method of saes.step: autograd (reference), fast, fast_bf16 (bf16 encoder); "
            "auto: fast_native on CPU when a C++ compiler builds the kernels, else fast"
        },
    )
    aux_coef: float = field(default=1 / 32, metadata={"help": "AuxK loss coefficient (dead latents model the residual)"})
    k_aux: int | None = field(default=None, metadata={"help": "dead latents used by AuxK per token (none: d_in // 2)"})
    dead_tokens: int = field(
        default=10_000_000,
        metadata={"help": "dead window cap: a latent that has not fired in the last N training tokens is dead (AuxK "
                          "trains it), N = min(dead_tokens, max(batch_size, dead_window_fraction x total_tokens))"},
    )
    dead_window_fraction: float = field(
        default=0.1,
        metadata={"help": "the dead window as a fraction of the run, used when the run is too short for dead_tokens "
                          "(so dead latents are found, and AuxK engages, in short runs too)"},
    )
    holdout_tokens: int = field(
        default=16384,
        metadata={
            "help": "rows taken from the start of the stream, not trained on in the first pass over a cache (a second pass "
            "trains on them too: the CLI says so): they set the activation "
            "scale and b_dec, and are the held-out set of the evaluation"
        },
    )
    normalize_activations: bool = field(
        default=True,
        metadata={"help": "scale inputs so E||x|| = sqrt(d_in) while training; the scale is folded into the saved SAE"},
    )
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = field(
        default="geometric_median", metadata={"help": "initial decoder bias, from the held-out sample"}
    )
    encoder_init_scale: float | None = field(
        default=None,
        metadata={"help": "initial W_enc = this x W_dec^T (none: the least-squares fit of the first top-k "
                          "reconstruction to the held-out rows; 1: the plain transpose, which overshoots at first)"},
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "fine-tune: start every SAE from this SAE's weights (a saesteer or SAELens folder, "
                          "sae_lens:RELEASE/SAE_ID, a sparsify, dictionary_learning or Gemma Scope SAE; a transcoder "
                          "for a run with a target hook); its d_in (d_out), hook point(s) and model must be the data's; "
                          "SAE flags default to its architecture, d_sae, k and skip connection"},
    )
    init_from_allow_mismatch: bool = field(
        default=False,
        metadata={"help": "with init_from: accept a source SAE recorded for another hook point (input or target), "
                          "model or BOS policy (d_in and d_out must still match)"},
    )
    threshold_lr: float = field(
        default=0.05, metadata={"help": "BatchTopK/Matryoshka: step size of the per-latent inference thresholds"}
    )
    jumprelu_threshold_lr: float = field(
        default=0.01,
        metadata={"help": "JumpReLU: peak Adam learning rate of the thresholds, their own step size (the LR schedule "
                          "applies; the other weights use the SAE's LR), in the trainer's units (inputs scaled to "
                          "E||x|| = sqrt(d_in))"},
    )
    max_nonfinite: int = field(
        default=10, metadata={"help": "stop the run after this many consecutive skipped (NaN/Inf) steps of one SAE"}
    )
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)"})
    device: str = field(default="cpu", metadata={"help": "device of the SAEs and batches, e.g. cpu, cuda, cuda:1"})

    def __post_init__(self) -> None:
        whole_number("TrainConfig", "total_tokens", self.total_tokens)
        whole_number("TrainConfig", "batch_size", self.batch_size)
        whole_number("TrainConfig", "seed", self.seed, minimum=0)
        require(isinstance(self.step_method, str) and bool(self.step_method), "TrainConfig.step_method must be a method name or auto")
        finite_number("TrainConfig", "aux_coef", self.aux_coef, lo=0.0)
        if self.k_aux is not None:
            whole_number("TrainConfig", "k_aux", self.k_aux)
        whole_number("TrainConfig", "dead_tokens", self.dead_tokens)
        finite_number("TrainConfig", "dead_window_fraction", self.dead_window_fraction, 0.0, 1.0)
        require(self.dead_window_fraction > 0, "TrainConfig.dead_window_fraction must be in (0, 1]")
        whole_number("TrainConfig", "holdout_tokens", self.holdout_tokens)
        require(
            self.b_dec_init in ("geometric_median", "mean", "zeros"),
            f"TrainConfig.b_dec_init must be geometric_median, mean or zeros; got {self.b_dec_init!r}",
        )
        if self.encoder_init_scale is not None:
            finite_number("TrainConfig", "encoder_init_scale", self.encoder_init_scale, lo=0.0)
            require(self.encoder_init_scale > 0, "TrainConfig.encoder_init_scale must be positive (or none for the least-squares fit)")
        finite_number("TrainConfig", "threshold_lr", self.threshold_lr, lo=0.0)
        finite_number("TrainConfig", "jumprelu_threshold_lr", self.jumprelu_threshold_lr, lo=0.0)
        if self.init_from is not None:
            require(isinstance(self.init_from, str) and bool(self.init_from.strip()),
                    f"TrainConfig.init_from must be an SAE path or sae_lens:RELEASE/SAE_ID; got {self.init_from!r}")
            if not self.init_from.startswith("sae_lens:"):  # a path: absolute, so a resume compares like with like
                self.init_from = os.path.abspath(os.path.expanduser(self.init_from))
        whole_number("TrainConfig", "max_nonfinite", self.max_nonfinite)
        whole_number("TrainConfig", "num_threads", self.num_threads, minimum=0)

    @property
    def total_steps(self) -> int:
        return -(-self.total_tokens // self.batch_size)

    @property
    def dead_window_tokens(self) -> int:
        """N of the one definition of a dead latent: no firing in the last N training tokens
        (docs/training.md, "Dead latents"). SAELens (`dead_feature_window`, in steps) and sparsify
        (`dead_feature_threshold`, 10M tokens) use a fixed window, which a run shorter than it never
        fills: nothing is ever dead and AuxK never engages. Here the window shrinks with the run."""
        scaled = max(self.batch_size, math.ceil(self.dead_window_fraction * self.total_tokens))
        return min(self.dead_tokens, scaled)


@dataclass
class CheckpointConfig:
    """Checkpoints: every N tokens (and at the end), keeping the last K."""

    every_tokens: int = field(default=5_000_000, metadata={"help": "write a checkpoint every this many tokens (0: only at the end)"})
    keep_last: int = field(default=2, metadata={"help": "checkpoints kept (older ones are deleted)"})

    def __post_init__(self) -> None:
        whole_number("CheckpointConfig", "every_tokens", self.every_tokens, minimum=0)
        whole_number("CheckpointConfig", "keep_last", self.keep_last)


@dataclass
class EvalConfig:
    """Evaluation on the held-out rows (and, with a model, CE loss recovered and KL)."""

    every_tokens: int = field(default=2_000_000, metadata={"help": "evaluate every this many tokens (0: only at the end)"})
    dense_threshold: float = field(
        default=0.1, metadata={"help": "a latent firing on more than this fraction of held-out tokens counts as dense"}
    )
    ce_contexts: int = field(
        default=64, metadata={"help": "contexts for CE loss recovered / KL when the model is loaded (0: skip)"}
    )
    ce_batch_size: int = field(default=16, metadata={"help": "contexts per model forward pass in the CE evaluation "
                                                             "(fewer where their float32 logits would pass 256 MB: a "
                                                             "large vocabulary)"})
    ce_during_training: bool = field(
        default=False, metadata={"help": "also compute CE loss recovered at every evaluation, not only at the end"}
    )

    def __post_init__(self) -> None:
        whole_number("EvalConfig", "every_tokens", self.every_tokens, minimum=0)
        finite_number("EvalConfig", "dense_threshold", self.dense_threshold, 0.0, 1.0)
        whole_number("EvalConfig", "ce_contexts", self.ce_contexts, minimum=0)
        whole_number("EvalConfig", "ce_batch_size", self.ce_batch_size)


WANDB_PROJECT_FORBIDDEN = "/\\#?%:"  # characters wandb refuses in a project name


@dataclass
class LogConfig:
    """Training history, progress bar and wandb."""

    log_every: int = field(default=20, metadata={"help": "record losses every this many steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (tokens/s, loss, ETA)"})
    wandb: bool = field(default=False, metadata={"help": "log to Weights & Biases (WANDB_MODE=offline works)"})
    wandb_project: str = field(default="saesteer", metadata={"help": "wandb project"})
    wandb_entity: str | None = field(default=None, metadata={"help": "wandb entity (team or user)"})
    wandb_name: str | None = field(default=None, metadata={"help": "wandb run name (none: the output folder's name)"})

    def __post_init__(self) -> None:
        whole_number("LogConfig", "log_every", self.log_every)
        # wandb's own rule (wandb_settings.validate_project), checked here so that a bad name is told
        # before the run loads anything, and not as a login problem when wandb.init refuses it
        bad = sorted(set(WANDB_PROJECT_FORBIDDEN) & set(self.wandb_project or ""))
        require(not self.wandb or (not bad and 0 < len(self.wandb_project or "") <= 128),
                f"LogConfig.wandb_project {self.wandb_project!r}: wandb takes 1 to 128 characters without any of "
                f"{' '.join(WANDB_PROJECT_FORBIDDEN)}" + (f" (it has {' '.join(bad)})" if bad else ""),
                field="wandb_project")


@dataclass
class DataConfig:
    """Where the activations come from (used by `saesteer train`; `train()` takes any iterator)."""

    cache: str | None = field(
        default=None, metadata={"help": "activation cache directory (from `saesteer cache`); none: compute the activations "
                                        "with --model over the text options"}
    )
    holdout_cache: str | None = field(
        default=None,
        metadata={"help": "activation cache of other text (e.g. the validation split, cached with the same --model, "
                          "--hooks, --bos-policy, --context-length and --exclude-tokens) the held-out rows come from; "
                          "a resume needs the run's own; none: the first rows of --cache's stream, trained on from "
                          "its second pass on"},
    )
    hook: str | None = field(default=None, metadata={"help": "hook point to train on; none: the cache's only hook, or "
                                                             "blocks.<n_layers//2>.hook_resid_post without a cache"})
    target_hook: str | None = field(
        default=None,
        metadata={"help": "train transcoders: read --hook, predict this later hook point (e.g. --hook "
                          "blocks.L.ln2.hook_normalized --target-hook blocks.L.hook_mlp_out); the cache must hold both "
                          "(`saesteer cache --hooks IN,OUT`). none: SAEs reconstructing --hook"},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "model ('toy', HF name, local dir) for CE loss recovered / KL, and the activation source "
                          "without a cache; none: the model the cache records (without a cache: toy, for --dataset toy only)"},
    )
    model_eval: bool = field(default=True, metadata={"help": "load the model for CE loss recovered and KL divergence"})
    process_weights: bool = field(
        default=False,
        metadata={"help": "without a cache: apply TransformerLens's default weight processing to --model (as "
                          "HookedSAETransformer.from_pretrained does; see `saesteer cache --process-weights`). With a "
                          "cache, its record decides"},
    )
    eval_split: str = field(
        default="validation",
        metadata={"help": "split giving the held-out contexts of the CE evaluation, of the training data or of "
                          "the eval dataset when that has several splits (training data without such a split: "
                          "the cache's last shard, with a note)"},
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "text for the CE evaluation, separate from the training data: a local file, folder, "
                          "split=path mapping or hub name (none: --eval-split of the training data)"},
    )
    allow_eval_overlap: bool = field(
        default=False,
        metadata={"help": "evaluate even when the eval text is all training text (refused by default; a partial "
                          "overlap is always reported)"},
    )
    reader_buffer_rows: int = field(default=1 << 20, metadata={"help": "shuffle window of the cache reader, in rows"})
    dp_partition: Literal["shards", "rows"] = field(
        default="shards",
        metadata={"help": "several processes (torchrun): shards = each rank reads its own shards (no shard read "
                          "twice; resume needs the same number of ranks); rows = every rank reads the one stream "
                          "and keeps its slice of each batch (exactly one process's batches; any number of ranks "
                          "on resume)"},
    )

    def __post_init__(self) -> None:
        whole_number("DataConfig", "reader_buffer_rows", self.reader_buffer_rows)
        require(self.dp_partition in ("shards", "rows"), f"DataConfig.dp_partition must be shards or rows; got {self.dp_partition!r}")


@dataclass
class RunConfig:
    """Everything a training run is defined by."""

    saes: list[SAESpec] = field(default_factory=lambda: [SAESpec()])
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        require(len(self.saes) > 0, "RunConfig.saes is empty: give at least one SAE to train")
        self.saes = [s if isinstance(s, SAESpec) else SAESpec(**s) for s in self.saes]
        names = [s.name for s in self.saes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        require(not dupes, f"RunConfig.saes has duplicate names {dupes}; set SAESpec.name to tell them apart")
        from saes.fileio import case_collisions

        clash = case_collisions(names)  # on macOS / Windows both SAEs would write one folder
        require(not clash, f"RunConfig.saes has names that differ only in case ({', '.join(' / '.join(g) for g in clash)}): "
                           "one folder on macOS and Windows; set SAESpec.name to tell them apart")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "saes": [spec.to_dict() for spec in self.saes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a (possibly partial) nested dict, e.g. a run's recorded config.json; unknown keys
        are an error naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"a run config must be a mapping; got {type(d).__name__}")
        sections = {"train": TrainConfig, "optim": OptimConfig, "checkpoint": CheckpointConfig, "eval": EvalConfig, "log": LogConfig}
        unknown = sorted(set(d) - set(sections) - {"saes"})
        if unknown:
            raise ValueError(f"unknown config section(s) {', '.join(unknown)}; known: saes, {', '.join(sections)}")
        kw: dict[str, Any] = {}
        for key, klass in sections.items():
            if key in d:
                kw[key] = _from_mapping(klass, d[key], key)
        if "saes" in d:
            if not isinstance(d["saes"], list):
                raise ValueError("config 'saes' must be a list of SAE specs")
            # a record: a field its architecture does not take (a JumpReLU's k=32 of older runs) is dropped
            kw["saes"] = [_from_mapping(SAESpec, spec_record(s) if isinstance(s, dict) else s, f"saes[{i}]")
                          for i, s in enumerate(d["saes"])]
        return cls(**kw)


def _from_mapping(klass: type, values: Any, where: str):
    if isinstance(values, klass):
        return values
    if not isinstance(values, dict):
        raise ValueError(f"config section {where!r} must be a mapping")
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in config section {where!r}: {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return klass(**values)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {f"{prefix}len": len(d)}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def _resumable(path: str, allowed: tuple[str, ...]) -> bool:
    for pat in allowed:
        if pat.endswith(".*") and path.startswith(pat[:-1]):
            return True
        if path == pat:
            return True
    return False


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], allowed: tuple[str, ...] = RESUMABLE_FIELDS
) -> list[str]:
    """'field: checkpoint X, now Y' for every differing field not in `allowed` (dotted paths).

    A field the checkpoint's section lacks (added in a later version, e.g. train.init_from) counts
    as its default: a run saved before it existed ran with the behaviour the default keeps. An SAE
    field its architecture does not take (a JumpReLU's k) is no difference (`spec_record`), nor is
    a run-wide setting no SAE of the run reads (`_unused_fields`: a TopK run's threshold_lr)."""
    a, b = _flatten(_spec_records(saved)), _flatten(_spec_records(current))
    defaults = _flatten(RunConfig().to_dict())
    unused = _unused_fields(saved, current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if _resumable(key, allowed) or key in unused:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va == "<absent>" and _added_later(key, a, defaults) and vb == defaults[_first_item(key)]:
            continue
        if va != vb:
            diffs.append(f"{key}: checkpoint {va!r}, now {vb!r}")
    return diffs


def _unused_fields(*configs: dict[str, Any]) -> set[str]:
    """The `ARCHITECTURE_SETTINGS` (as train.<name>) that no SAE of these configs reads: those its
    class's `train_settings` leaves out, and jumprelu_threshold_lr without `own_lr_parameters` (a
    Matryoshka run's k_aux is compared, a JumpReLU run's is not). An unknown architecture, or a class
    whose settings are not known, reads them all."""
    from saes.registry import sae_class

    read: set[str] = set()
    for config in configs:
        for spec in config.get("saes") or []:
            try:
                cls = sae_class(spec["architecture"])
            except (KeyError, TypeError, ValueError):
                return set()
            if cls.train_settings is None:
                return set()
            read |= cls.train_settings | ({"jumprelu_threshold_lr"} if cls.own_lr_parameters else set())
    return {f"train.{name}" for name in ARCHITECTURE_SETTINGS if name not in read}


def _spec_records(config: dict[str, Any]) -> dict[str, Any]:
    saes = config.get("saes")
    if not isinstance(saes, list):
        return config
    return {**config, "saes": [spec_record(s) if isinstance(s, dict) else s for s in saes]}


def _first_item(key: str) -> str:
    """saes.3.k -> saes.0.k: the default config's key for a field of any list item."""
    parts = key.split(".")
    return ".".join("0" if p.isdigit() else p for p in parts)


def _added_later(key: str, saved: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """The saved config has the field's section (or list item) but not the field, and the field is
    one the current config defines: a field newer than the checkpoint."""
    parent = key.rsplit(".", 1)[0] + "."
    return _first_item(key) in defaults and any(k.startswith(parent) for k in saved)


def default_lr(d_sae: int) -> float:
    """The sparsify width rule: 2e-4 at 16384 latents, scaled by 1/sqrt(width)."""
    return 2e-4 / math.sqrt(d_sae / 16384)


def sae_lr(spec: SAESpec, optim: OptimConfig) -> float:
    if spec.lr is not None:
        return spec.lr
    if optim.lr is not None:
        return optim.lr
    return default_lr(spec.d_sae)
