"""The SAE trainer's state and step: one pass over activation batches trains one or several SAEs.

Shape key: B batch rows, D d_in, F d_sae, N active entries.

    from training import RunConfig, SAESpec, train
    cfg = RunConfig(saes=[SAESpec("topk", d_sae=4096, k=32), SAESpec("batchtopk", d_sae=4096, k=32)])
    result = train(cfg, CacheReader(cache_dir, batch_size=cfg.train.batch_size), "runs/l2")

This module is the `Trainer` (SAEs, optimisers, counters, position; its checkpoint payload) and
each SAE's `Member` state with its optimiser (Adam, fused where it works; the parameters an SAE
class declares in `own_lr_parameters`, JumpReLU's thresholds, in a param group of their own, at
TrainConfig.jumprelu_threshold_lr). One optimiser update of one
SAE is `training.update.train_step`; the run around the trainer (`train()`: resume, logging,
checkpoints, the end) is `training.run`. Every operation that crosses processes in data-parallel
training is a call on `Collectives` (see training/collectives.py).

Inputs are scaled by one factor (E||x|| = sqrt(d_in) on the held-out rows); the factor is
folded into the saved weights, so saved SAEs read raw activations.

Transcoders (`Trainer(..., d_out=)`, a run whose data has a target hook): every SAE of the run is
a transcoder of its architecture (`SAESpec.skip`: with a skip connection), each batch is a pair
(`.acts` the input, `.targets` the target), the target has its own scale (E||y|| = sqrt(d_out)),
b_dec starts at the target's median, and losses, FVU and EV are the target's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saes import SAE, create_sae
from saes.errors import SaesteerError
from saes.fast_step import StepWorkspace
from training.checkpoint import (
    CheckpointError,
    capture_rng,
    flatten_state,
    restore_rng,
    unflatten_state,
)
from training.collectives import Collectives
from training.config import RunConfig, SAESpec, sae_lr
from training.evaluate import evaluate_activations, sae_reconstructor
from training.initialize import (
    estimate_activation_scale,
    initial_b_dec,
    largest_silent_pre_activation,
    least_squares_encoder_scale,
)
from training.schedule import lr_factor
from training.update import StepSettings, StepStats, resolve_step_method, train_step


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps; the last good checkpoint is left as it was."""


class ConfigMismatchError(SaesteerError, ValueError):
    """A resume whose config or data differs from the checkpoint's in what may not change."""


class DeadStartError(SaesteerError, ValueError):
    """An SAE that would start with no latent firing on the held-out rows (and so never learn)."""


class DataError(SaesteerError, ValueError):
    """Training data that cannot be used (no rows, non-finite rows); the message says why."""


# ------------------------------------------------------------------------------ one SAE's state
@dataclass
class Member:
    """One SAE under training with everything that belongs to it alone."""

    spec: SAESpec
    sae: SAE
    optimizer: torch.optim.Optimizer
    since_fired_F: Tensor  # int64 [F]: tokens since each latent last fired
    group_lrs: tuple[float, ...]  # peak LR of each optimiser param group (`param_groups`; the first is the SAE's)
    consecutive_nonfinite: int = 0
    skipped_steps: int = 0
    workspace: StepWorkspace = field(default_factory=StepWorkspace)  # the fast step's reused buffers

    @property
    def lr(self) -> float:
        """The SAE's peak LR (its weights' group)."""
        return self.group_lrs[0]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.sae.parameters())

    def dead_mask(self, window: int) -> Tensor:
        """Dead: no firing in the last `window` training tokens (TrainConfig.dead_window_tokens)."""
        return self.since_fired_F >= window


def make_optimizer(params: list[torch.nn.Parameter] | list[dict[str, Any]], lr: float,
                   cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam, fused when the device/dtype supports it (CPU fp32 and CUDA do in torch >= 2.4);
    `params`: parameters, or param groups (dicts with their own "lr")."""
    kw = dict(lr=lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2), eps=cfg.optim.adam_eps)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kw)


def param_groups(sae: SAE, lr: float, cfg: RunConfig) -> list[dict[str, Any]]:
    """The SAE's optimiser param groups: every weight at the SAE's LR, and the parameters its class
    declares in `own_lr_parameters` (learned thresholds: JumpReLU's) in a group of their own at
    TrainConfig.jumprelu_threshold_lr. The thresholds must travel from where they start to where
    the sparsity penalty wants them, a distance of the pre-activations' scale, while Adam moves a
    parameter by about its LR per step: at a small SAE LR they would not get there within a short
    run (benchmarks/RESULTS.md)."""
    names = type(sae).own_lr_parameters
    if not names:
        return [{"params": list(sae.parameters()), "lr": lr}]
    named = dict(sae.named_parameters())
    missing = [n for n in names if n not in named]
    if missing:
        raise TypeError(f"{type(sae).__name__}.own_lr_parameters names {', '.join(missing)}, which "
                        f"{'is not a parameter' if len(missing) == 1 else 'are not parameters'} of it; its parameters: "
                        f"{', '.join(named)}")
    own = [named[n] for n in names]
    weights = [p for p in sae.parameters() if not any(p is q for q in own)]
    return [{"params": weights, "lr": lr}, {"params": own, "lr": cfg.train.jumprelu_threshold_lr}]


def build_member(spec: SAESpec, index: int, d_in: int, cfg: RunConfig, device: torch.device, metadata: dict[str, Any],
                 d_out: int | None = None) -> Member:
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + index)
    if spec.skip and d_out is None:
        raise ConfigMismatchError(f"SAESpec.skip is set for {spec.name!r} but the data has no target hook: a skip "
                                  f"connection belongs to a transcoder (give DataConfig.target_hook)", field="skip")
    mode = {} if d_out is None else {"d_out": d_out, "apply_b_dec_to_input": False, "skip_connection": spec.skip}
    sae = create_sae(spec.architecture, d_in, spec.d_sae, device=device, generator=gen, metadata=dict(metadata),
                     **spec.sae_config_fields(), **mode)
    lr = sae_lr(spec, cfg.optim)
    groups = param_groups(sae, lr, cfg)
    return Member(spec, sae, make_optimizer(groups, lr, cfg),
                  torch.zeros(spec.d_sae, dtype=torch.int64, device=device), tuple(g["lr"] for g in groups))


def refuse_a_dead_start(m: Member, xs_BD: Tensor) -> None:
    """An SAE without k (JumpReLU) whose initial thresholds let no latent fire on the held-out rows
    learns nothing, silently (every latent dead from step 1, EV 0). Real activations meet this at
    the default threshold 1.0: most of their norm is a constant direction that b_dec takes away,
    leaving pre-activations well below 1 after the scaling to E||x|| = sqrt(d_in)."""
    cfg = m.sae.cfg
    if getattr(cfg, "k", None) is not None or getattr(cfg, "pre_act_loss_coefficient", 0.0) > 0:
        return  # top-k always selects; the pre-activation loss pulls silent latents up
    largest = largest_silent_pre_activation(m.sae, xs_BD)
    if largest is None:
        return
    init = getattr(cfg, "jumprelu_init_threshold", None)
    raise DeadStartError(
        f"{m.name}: no latent fires on any of the {xs_BD.shape[0]:,} held-out rows at its initial threshold"
        f"{'' if init is None else f' {init:g}'} (the largest pre-activation is {largest:.3g}), so it would get no "
        f"gradient and stay dead; pass --jumprelu-init-firing-rate 0.01 (each latent's threshold from its own "
        f"pre-activations) or a --jumprelu-init-threshold below {_two_digits_down(max(largest, 0.0)):g}")


def _two_digits_down(x: float) -> float:
    """`x` to two significant digits, rounded down (1.19 -> 1.1, not 1.2: a bound to stay below)."""
    if x <= 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.floor(x / step) * step


# ------------------------------------------------------------------------------------ trainer
def batch_tensor(batch: Any) -> Tensor:
    """The [B, D] activations of a batch: a tensor, or an object with `.acts` (CacheReader)."""
    x = getattr(batch, "acts", batch)
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise TypeError(f"a training batch must be a [B, d_in] tensor or have .acts; got {type(batch).__name__}")
    return x


def batch_targets(batch: Any) -> Tensor | None:
    """A transcoder batch's [B, O] target rows (`.targets`, paired with `.acts`); None for an SAE's batch."""
    y = getattr(batch, "targets", None)
    if y is not None and (not isinstance(y, Tensor) or y.ndim != 2):
        raise TypeError(f"a batch's targets must be a [B, d_out] tensor; got {type(y).__name__}")
    return y


class Trainer:
    """The state of a run (SAEs, optimisers, counters, position) and the step over all SAEs.

    `train()` drives it; tests and tools may drive it directly."""

    def __init__(
        self, config: RunConfig, d_in: int, *, collectives: Collectives | None = None,
        sae_metadata: dict[str, Any] | None = None, d_out: int | None = None,
    ) -> None:
        self.config = config
        self.d_in = d_in
        self.d_out = d_out  # transcoders: the target's width (None: SAEs)
        self.coll = collectives or Collectives()
        self.device = torch.device(config.train.device)
        self.members = [
            build_member(spec, i, d_in, config, self.device, sae_metadata or {}, d_out)
            for i, spec in enumerate(config.saes)
        ]
        self.step_method = resolve_step_method(config.train.step_method, self.device, [m.sae for m in self.members])
        t = config.train
        self.dead_window = t.dead_window_tokens
        self.settings = StepSettings(self.step_method, t.aux_coef, t.k_aux, self.dead_window, config.optim.grad_clip,
                                     t.threshold_lr)
        self.step = 0
        self.tokens = 0
        self.scale = 1.0
        self.target_scale = 1.0  # transcoders: the target's own scale (an SAE's target is its input)
        self.train_seconds = 0.0
        self.init_from: dict[str, Any] | None = None  # fine-tuning: the source SAE's record (training.init_from)
        # where the held-out rows come from (training.holdout_cache.holdout_source): a resume must match it
        self.holdout_source: dict[str, Any] | None = None

    @property
    def total_steps(self) -> int:
        return self.config.train.total_steps

    # -- initialisation ---------------------------------------------------------------------
    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def output_scale(self) -> float:
        """The scale of what the SAEs reconstruct: a transcoder's target scale, else the input's."""
        return self.target_scale if self.is_transcoder else self.scale

    @torch.no_grad()
    def initialize(self, holdout_BD: Tensor, holdout_targets: Tensor | None = None) -> None:
        """Activation scale(s), b_dec and the encoder's initial scale from the held-out rows (a fresh
        run only); `holdout_targets`: a transcoder run's held-out target rows.

        The scale is computed on rank 0's sample and broadcast with the other parameters."""
        x = holdout_BD.to(self.device, torch.float32)  # the whole held-out set on every rank (training.resume.draw_holdout)
        normalize = self.config.train.normalize_activations
        self.scale = estimate_activation_scale(x) if normalize else 1.0
        y = None
        if self.is_transcoder:
            if holdout_targets is None:
                raise DataError("a transcoder run needs the held-out target rows; the data yielded batches without "
                                "targets (read the cache with its target hook)")
            y = holdout_targets.to(self.device, torch.float32)
            self.target_scale = estimate_activation_scale(y) if normalize else 1.0
        xs = x * self.scale  # what the SAEs read
        goal = xs if y is None else y * self.target_scale  # what the decoder's output must match
        b_dec_D = initial_b_dec(goal, self.config.train.b_dec_init, self.coll)
        init_scale = self.config.train.encoder_init_scale
        for m in self.members:
            m.sae.b_dec.copy_(b_dec_D)
            m.sae.fit_initial_thresholds_(xs)  # JumpReLU: each latent's threshold from its own pre-activations
            c = init_scale if init_scale is not None else least_squares_encoder_scale(
                m.sae.W_enc, m.sae.b_enc, m.sae.W_dec, b_dec_D, xs, getattr(m.sae.cfg, "k", None),
                target_BO=None if y is None else goal, select=m.sae.select)
            # before the scaling, which changes no latent's firing: the pre-activations it names are then in the
            # units of --jumprelu-init-threshold
            refuse_a_dead_start(m, xs)
            if c != 1.0:  # thresholds too: a JumpReLU's initial threshold is relative to the unscaled encoder
                m.sae.scale_encoder_(c)
            for p in m.params:
                self.coll.broadcast_(p.data)

    # -- the step over all SAEs ---------------------------------------------------------------
    def prepare(self, batch: Any) -> Tensor:
        x = batch_tensor(batch)
        if x.shape[1] != self.d_in:
            raise ValueError(f"batch has width {x.shape[1]}, the run trains on d_in={self.d_in}")
        x = x.to(self.device, non_blocking=True).to(torch.float32)  # stored fp16 crosses to a GPU as fp16: half the bytes
        return x * self.scale if self.scale != 1.0 else x

    def prepare_targets(self, batch: Any, rows: int) -> Tensor | None:
        """A transcoder batch's target rows, scaled (None for an SAE run)."""
        if not self.is_transcoder:
            return None
        y = batch_targets(batch)
        if y is None:
            raise DataError("a transcoder run got a batch without target rows; read the cache with its target hook")
        if y.shape != (rows, self.d_out):
            raise ValueError(f"batch targets have shape {tuple(y.shape)}, the run predicts [{rows}, d_out={self.d_out}]")
        y = y.to(self.device, non_blocking=True).to(torch.float32)
        return y * self.target_scale if self.target_scale != 1.0 else y

    def train_batch(self, batch: Any) -> tuple[Tensor, dict[str, StepStats]]:
        """One step of every SAE; returns the rows they reconstruct (a transcoder's: the targets,
        scaled) and each one's stats."""
        x_BD = self.prepare(batch)
        y_BO = self.prepare_targets(batch, x_BD.shape[0])
        factor = lr_factor(self.step, self.total_steps, self.config.optim)
        n_global = self.coll.global_rows(x_BD.shape[0])
        stats: dict[str, StepStats] = {}
        for m in self.members:
            st = train_step(m, x_BD, factor, self.settings, self.coll, n_global, y_BO, self.step)
            if st.skipped:
                m.consecutive_nonfinite += 1
                m.skipped_steps += 1
            else:
                m.consecutive_nonfinite = 0
            stats[m.name] = st
        self.step += 1
        self.tokens += n_global
        return (x_BD if y_BO is None else y_BO), stats

    def dead_fraction(self, m: Member) -> float:
        """Latents with no firing in the last `dead_window` training tokens (the mask AuxK uses)."""
        return float(m.dead_mask(self.dead_window).float().mean())

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, holdout_BD: Tensor, model_eval: Any = None,
                 holdout_targets: Tensor | None = None) -> dict[str, dict[str, Any]]:
        out = {}
        spliced = (model_eval.run([sae_reconstructor(m.sae, self.scale, self.output_scale) for m in self.members],
                                  self.config.eval) if model_eval is not None else None)
        for i, m in enumerate(self.members):
            r = evaluate_activations(m.sae, holdout_BD, scale=self.scale, dense_threshold=self.config.eval.dense_threshold,
                                     targets=holdout_targets, target_scale=self.output_scale)
            r["dead_fraction"] = self.dead_fraction(m)
            r["dead_window_tokens"] = self.dead_window
            if spliced is not None:
                r.update(spliced[i].to_dict())
            out[m.name] = r
        return out

    def folded_sae(self, m: Member) -> SAE:
        """A copy of the SAE with the activation scale folded in (reads raw activations)."""
        sae = copy.deepcopy(m.sae)
        if self.scale != 1.0 or self.output_scale != 1.0:
            sae.fold_activation_scale_(self.scale, self.output_scale)
        return sae

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_payload(self, data_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors: dict[str, Tensor] = {}
        members = {}
        for m in self.members:
            for name, t in m.sae.state_dict().items():
                tensors[f"sae/{m.name}/{name}"] = t.detach().cpu().contiguous().clone()
            tensors[f"dead/{m.name}"] = m.since_fired_F.cpu().clone()
            members[m.name] = {
                "lr": m.lr, "consecutive_nonfinite": m.consecutive_nonfinite, "skipped_steps": m.skipped_steps,
                "optimizer": flatten_state(m.optimizer.state_dict(), f"optim/{m.name}", tensors),
            }
        state = {
            "tokens": self.tokens, "step_method": self.step_method, "activation_scale": self.scale,
            "target_activation_scale": self.target_scale, "d_out": self.d_out,
            "train_seconds": self.train_seconds, "config": self.config.to_dict(), "members": members,
            "init_from": self.init_from, "holdout_source": self.holdout_source,
            "world_size": self.coll.world_size,
            "rng": capture_rng(tensors), "data": flatten_state(data_state, "data", tensors),
        }
        return state, tensors

    def restore(self, state: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
        """Load a checkpoint's state into this trainer; returns the saved data-source state."""
        if state.get("step_method") != self.step_method:
            raise ConfigMismatchError(
                f"train.step_method: the checkpoint was trained with {state.get('step_method')!r}, this run would use "
                f"{self.step_method!r}; pass --step-method {state.get('step_method')} to resume"
            )
        if state.get("d_out") != self.d_out:  # a transcoder's target width as saved (None: an SAE, no target)
            def target(d_out):
                return "no target (an SAE)" if d_out is None else f"a target of width d_out={d_out}"

            raise ConfigMismatchError(
                f"target_hook: the checkpoint's run has {target(state.get('d_out'))}, this run has "
                f"{target(self.d_out)}; resume with the target hook the run started with", field="target_hook")
        for m in self.members:
            saved = state["members"].get(m.name)
            if saved is None:
                raise CheckpointError(f"the checkpoint has no SAE named {m.name!r}")
            sd = {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"sae/{m.name}/")}
            w = sd.get("W_enc")
            if w is not None and tuple(w.shape) != tuple(m.sae.W_enc.shape):
                raise ConfigMismatchError(
                    f"d_in: the checkpoint's SAE {m.name} reads activations of width {w.shape[0]} (d_sae "
                    f"{w.shape[1]}), this run's data has width {m.sae.d_in} (d_sae {m.sae.d_sae}): the data comes "
                    f"from another model or hook point; resume with the data the run started with, or start a new run")
            m.sae.load_state_dict(sd)
            m.since_fired_F.copy_(tensors[f"dead/{m.name}"])
            optim_state = unflatten_state(saved["optimizer"], tensors)
            n_saved, n_now = len(optim_state["param_groups"]), len(m.optimizer.param_groups)
            if n_saved != n_now:  # a JumpReLU checkpoint from before its thresholds had a group of their own
                raise ConfigMismatchError(
                    f"jumprelu_threshold_lr: the checkpoint's SAE {m.name} was trained with {n_saved} optimiser "
                    f"param group(s), this version trains it with {n_now} (JumpReLU thresholds have their own step "
                    f"size now); it cannot resume exactly: start a new run", field="jumprelu_threshold_lr")
            m.optimizer.load_state_dict(optim_state)
            m.consecutive_nonfinite = int(saved["consecutive_nonfinite"])
            m.skipped_steps = int(saved["skipped_steps"])
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.scale = float(state["activation_scale"])
        self.target_scale = float(state.get("target_activation_scale", 1.0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.init_from = state.get("init_from")
        restore_rng(state["rng"], tensors)
        return unflatten_state(state["data"], tensors)
