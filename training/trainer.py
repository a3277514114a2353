"""The SAE trainer: one pass over activation batches trains one or several SAEs.

Shape key: B batch rows, D d_in, F d_sae, N active entries.

    from training import RunConfig, SAESpec, train
    cfg = RunConfig(saes=[SAESpec("topk", d_sae=4096, k=32), SAESpec("batchtopk", d_sae=4096, k=32)])
    result = train(cfg, CacheReader(cache_dir, batch_size=cfg.train.batch_size), "runs/l2")

Per step and SAE (`train_step`, one short function): gradients from `saes.compute_grads` (the
step method: autograd reference, or the fast / fast_bf16 kernels), averaged over ranks, the
component of each decoder row's gradient parallel to the row removed, a non-finite check
(skip the step), optional clipping, Adam (fused where it works), decoder rows back to unit
norm, the dead-latent counters, and (BatchTopK / Matryoshka) one frequency-matching step of
the inference thresholds. Every operation that crosses processes in data-parallel training is
a call on `Collectives` (see training/collectives.py).

Inputs are scaled by one factor (E||x|| = sqrt(d_in) on the held-out rows); the factor is
folded into the saved weights, so saved SAEs read raw activations.
"""

from __future__ import annotations

import copy
import importlib.metadata
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, NamedTuple

import torch
from torch import Tensor

from saes import SAE, create_sae, save_sae
from saes.io import remove_save_leftovers
from saes.errors import SaesteerError
from saes.fast_step import StepWorkspace
from saes.sparse import SparseActs
from saes.step import STEP_METHODS, compute_grads
from training.checkpoint import (
    CheckpointError,
    capture_rng,
    checkpoint_name,
    clean_temporaries,
    flatten_state,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    restore_rng,
    unflatten_state,
    write_checkpoint,
)
from training.collectives import Collectives
from training.config import RunConfig, SAESpec, config_differences, sae_lr
from training.evaluate import evaluate_activations, sae_reconstructor, splice_metrics
from training.initialize import estimate_activation_scale, initial_b_dec, least_squares_encoder_scale
from training.logs import HISTORY_FILE, RunLogger, read_history, truncate_history
from training.report import git_commit, write_curves_html, write_metrics
from training.schedule import lr_factor

CHECKPOINT_DIR = "checkpoints"
SAE_DIR = "saes"
CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps; the last good checkpoint is left as it was."""


class ConfigMismatchError(SaesteerError, ValueError):
    """A resume whose config or data differs from the checkpoint's in what may not change."""


class DataError(SaesteerError, ValueError):
    """Training data that cannot be used (no rows, non-finite rows); the message says why."""


# ------------------------------------------------------------------------------ one SAE's state
@dataclass
class Member:
    """One SAE under training with everything that belongs to it alone."""

    spec: SAESpec
    sae: SAE
    optimizer: torch.optim.Optimizer
    lr: float
    since_fired_F: Tensor  # int64 [F]: tokens since each latent last fired
    consecutive_nonfinite: int = 0
    skipped_steps: int = 0
    workspace: StepWorkspace = field(default_factory=StepWorkspace)  # the fast step's reused buffers

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.sae.parameters())

    def dead_mask(self, window: int) -> Tensor:
        """Dead: no firing in the last `window` training tokens (TrainConfig.dead_window_tokens)."""
        return self.since_fired_F >= window


class StepSettings(NamedTuple):
    method: str
    aux_coef: float
    k_aux: int | None
    dead_window: int  # TrainConfig.dead_window_tokens
    grad_clip: float
    threshold_lr: float


class StepStats(NamedTuple):
    skipped: bool
    loss: Tensor
    mse: Tensor
    aux: Tensor
    level_mse: Tensor | None
    grad_norm: Tensor
    fired_F: Tensor | None  # firing counts over the global batch (None when skipped)


def resolve_step_method(name: str, device: torch.device | None = None, saes: Iterable[SAE] = ()) -> str:
    """'auto' -> 'fast_native' on CPU when the compiled kernels build here (1.1-1.5x faster than
    'fast', same results up to summation order: benchmarks/RESULTS.md), else 'fast', else
    'autograd' (also when one of `saes` has no fast step: its `training_rule` is not one the fast
    step implements); other names must be registered."""
    from saes.fast_step import FAST_RULES

    if name == "auto":
        if any(sae.training_rule not in FAST_RULES for sae in saes):
            return "autograd"
        if device is not None and device.type == "cpu" and "fast_native" in STEP_METHODS and _native_kernels_load():
            return "fast_native"
        return "fast" if "fast" in STEP_METHODS else "autograd"
    if name not in STEP_METHODS:
        raise ValueError(f"TrainConfig.step_method {name!r} is not available; choose auto or one of {', '.join(STEP_METHODS)}")
    return name


def _native_kernels_load() -> bool:
    from saes import native

    if not native.available():
        return False
    try:
        native.load()
    except (RuntimeError, OSError) as err:  # a compiler that cannot build them: the pure-torch step
        warnings.warn(f"compiled SAE kernels unavailable ({err}); training with step method 'fast'", stacklevel=3)
        return False
    return True


def make_optimizer(params: list[torch.nn.Parameter], lr: float, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam, fused when the device/dtype supports it (CPU fp32 and CUDA do in torch >= 2.4)."""
    kw = dict(lr=lr, betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2), eps=cfg.optim.adam_eps)
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, foreach=True, **kw)


def build_member(spec: SAESpec, index: int, d_in: int, cfg: RunConfig, device: torch.device, metadata: dict[str, Any]) -> Member:
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + index)
    sae = create_sae(spec.architecture, d_in, spec.d_sae, device=device, generator=gen, metadata=dict(metadata),
                     **spec.sae_config_fields())
    lr = sae_lr(spec, cfg.optim)
    return Member(spec, sae, make_optimizer(list(sae.parameters()), lr, cfg), lr,
                  torch.zeros(spec.d_sae, dtype=torch.int64, device=device))


# ---------------------------------------------------------------- small pieces of one step
def fired_counts(acts: SparseActs) -> Tensor:
    """How many rows each latent fired on (nonzero activation), [F] int64."""
    return torch.bincount(acts.indices_N[acts.values_N != 0], minlength=acts.d_sae)


def update_dead_counters_(since_fired_F: Tensor, fired_F: Tensor, n_tokens: int) -> None:
    since_fired_F.add_(n_tokens).masked_fill_(fired_F > 0, 0)


@torch.no_grad()
def remove_parallel_decoder_grad_(sae: SAE) -> None:
    """Project each decoder row's gradient onto the row's orthogonal complement (rows are unit)."""
    W_FD, g_FD = sae.W_dec, sae.W_dec.grad
    if g_FD is None:
        return
    along_F = torch.linalg.vecdot(g_FD, W_FD, dim=1)  # 2x faster than einsum's batched matmul on CPU
    g_FD.addcmul_(along_F[:, None], W_FD, value=-1.0)


def grad_norm(params: list[torch.nn.Parameter]) -> Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(
    m: Member, x_BD: Tensor, lr: float, s: StepSettings, coll: Collectives, n_global: int | None = None
) -> StepStats:
    """One optimiser step of one SAE on one batch (skipped, with grads dropped, if non-finite).

    Data parallel (`coll.distributed`): `x_BD` is this rank's part of a global batch of
    `n_global` rows; selections over the batch (BatchTopK) see the global batch, and the
    gradients are averaged with weights local rows / global rows (the gradient of the global
    batch's mean loss)."""
    n_local = x_BD.shape[0]
    n_global = coll.global_rows(n_local) if n_global is None else n_global
    res = compute_grads(m.sae, x_BD, m.dead_mask(s.dead_window), aux_coef=s.aux_coef, k_aux=s.k_aux, method=s.method,
                        group=coll.batch_group(), workspace=m.workspace)
    coll.average_gradients_(m.params, n_local / n_global if n_global else None)
    remove_parallel_decoder_grad_(m.sae)
    norm = grad_norm(m.params)
    if not coll.all_finite(bool(torch.isfinite(res.total) & torch.isfinite(norm))):
        for p in m.params:
            p.grad = None
        return StepStats(True, res.total, res.mse, res.aux, res.level_mse, norm, None)
    if s.grad_clip > 0:
        torch.nn.utils.clip_grads_with_norm_(m.params, s.grad_clip, norm, foreach=True)
    set_lr(m.optimizer, lr)
    m.optimizer.step()
    m.sae.normalize_decoder_()
    fired_F = coll.sum_(fired_counts(res.acts))
    update_dead_counters_(m.since_fired_F, fired_F, n_global)
    m.sae.update_inference_form_(res.pre_BF, res.acts, lr=s.threshold_lr, above_threshold_F=res.above_threshold_F,
                                 reduce=coll if coll.distributed else None)
    return StepStats(False, res.total, res.mse, res.aux, res.level_mse, norm, fired_F)


# ------------------------------------------------------------------------------------ trainer
def batch_tensor(batch: Any) -> Tensor:
    """The [B, D] activations of a batch: a tensor, or an object with `.acts` (CacheReader)."""
    x = getattr(batch, "acts", batch)
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise TypeError(f"a training batch must be a [B, d_in] tensor or have .acts; got {type(batch).__name__}")
    return x


class Trainer:
    """The state of a run (SAEs, optimisers, counters, position) and the step over all SAEs.

    `train()` drives it; tests and tools may drive it directly."""

    def __init__(
        self, config: RunConfig, d_in: int, *, collectives: Collectives | None = None,
        sae_metadata: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.d_in = d_in
        self.coll = collectives or Collectives()
        self.device = torch.device(config.train.device)
        self.members = [
            build_member(spec, i, d_in, config, self.device, sae_metadata or {}) for i, spec in enumerate(config.saes)
        ]
        self.step_method = resolve_step_method(config.train.step_method, self.device, [m.sae for m in self.members])
        t = config.train
        self.dead_window = t.dead_window_tokens
        self.settings = StepSettings(self.step_method, t.aux_coef, t.k_aux, self.dead_window, config.optim.grad_clip,
                                     t.threshold_lr)
        self.step = 0
        self.tokens = 0
        self.scale = 1.0
        self.train_seconds = 0.0

    @property
    def total_steps(self) -> int:
        return self.config.train.total_steps

    # -- initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, holdout_BD: Tensor) -> None:
        """Activation scale, b_dec and the encoder's initial scale from the held-out rows (a fresh run only).

        The scale is computed on rank 0's sample and broadcast with the other parameters."""
        x = holdout_BD.to(self.device, torch.float32)  # the whole held-out set on every rank (_draw_holdout)
        self.scale = estimate_activation_scale(x) if self.config.train.normalize_activations else 1.0
        b_dec_D = initial_b_dec(x * self.scale, self.config.train.b_dec_init, self.coll)
        init_scale = self.config.train.encoder_init_scale
        for m in self.members:
            m.sae.b_dec.copy_(b_dec_D)
            c = init_scale if init_scale is not None else least_squares_encoder_scale(
                m.sae.W_enc, m.sae.b_enc, m.sae.W_dec, b_dec_D, x * self.scale, m.spec.k)
            if c != 1.0:
                m.sae.W_enc.mul_(c)
                m.sae.b_enc.mul_(c)
            for p in m.params:
                self.coll.broadcast_(p.data)

    # -- the step over all SAEs ---------------------------------------------------------------
    def prepare(self, batch: Any) -> Tensor:
        x = batch_tensor(batch)
        if x.shape[1] != self.d_in:
            raise ValueError(f"batch has width {x.shape[1]}, the run trains on d_in={self.d_in}")
        x = x.to(self.device, non_blocking=True).to(torch.float32)  # stored fp16 crosses to a GPU as fp16: half the bytes
        return x * self.scale if self.scale != 1.0 else x

    def train_batch(self, batch: Any) -> tuple[Tensor, dict[str, StepStats]]:
        x_BD = self.prepare(batch)
        factor = lr_factor(self.step, self.total_steps, self.config.optim)
        n_global = self.coll.global_rows(x_BD.shape[0])
        stats: dict[str, StepStats] = {}
        for m in self.members:
            st = train_step(m, x_BD, m.lr * factor, self.settings, self.coll, n_global)
            if st.skipped:
                m.consecutive_nonfinite += 1
                m.skipped_steps += 1
            else:
                m.consecutive_nonfinite = 0
            stats[m.name] = st
        self.step += 1
        self.tokens += n_global
        return x_BD, stats

    def dead_fraction(self, m: Member) -> float:
        """Latents with no firing in the last `dead_window` training tokens (the mask AuxK uses)."""
        return float(m.dead_mask(self.dead_window).float().mean())

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, holdout_BD: Tensor, model_eval: Any = None) -> dict[str, dict[str, Any]]:
        out = {}
        for m in self.members:
            r = evaluate_activations(m.sae, holdout_BD, scale=self.scale, dense_threshold=self.config.eval.dense_threshold)
            r["dead_fraction"] = self.dead_fraction(m)
            r["dead_window_tokens"] = self.dead_window
            if model_eval is not None:
                r.update(model_eval.run(sae_reconstructor(m.sae, self.scale), self.config.eval).to_dict())
            out[m.name] = r
        return out

    def folded_sae(self, m: Member) -> SAE:
        """A copy of the SAE with the activation scale folded in (reads raw activations)."""
        sae = copy.deepcopy(m.sae)
        if self.scale != 1.0:
            sae.fold_activation_scale_(self.scale)
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
            "train_seconds": self.train_seconds, "config": self.config.to_dict(), "members": members,
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
            m.optimizer.load_state_dict(unflatten_state(saved["optimizer"], tensors))
            m.lr = float(saved["lr"])
            m.consecutive_nonfinite = int(saved["consecutive_nonfinite"])
            m.skipped_steps = int(saved["skipped_steps"])
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.scale = float(state["activation_scale"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        restore_rng(state["rng"], tensors)
        return unflatten_state(state["data"], tensors)


# ------------------------------------------------------------------------------------ train()
@dataclass
class ModelEval:
    """What the CE-loss-recovered / KL evaluation needs: the loaded model and held-out contexts.

    `keep_token_ids`: positions holding these tokens keep their clean activation when the SAE is
    spliced in (use the cache's excluded tokens, e.g. BOS, which the SAE never trained on)."""

    model: Any
    hook_name: str
    tokens: Tensor  # [N, S] token ids
    keep_token_ids: tuple[int, ...] = ()

    def run(self, reconstruct: Callable[[Tensor], Tensor], eval_cfg: Any):
        toks = self.tokens[: eval_cfg.ce_contexts] if eval_cfg.ce_contexts else self.tokens
        return splice_metrics(self.model, reconstruct, self.hook_name, toks, keep_token_ids=self.keep_token_ids,
                              batch_size=eval_cfg.ce_batch_size)


@dataclass
class TrainResult:
    out_dir: Path
    sae_dirs: dict[str, Path]
    metrics: dict[str, Any]
    tokens: int
    steps: int
    resumed_from: Path | None = None
    stopped_early: str | None = None
    saes: dict[str, SAE] = field(default_factory=dict)  # the saved (folded) SAEs


def _draw_holdout(it: Iterator[Any], rows: int, coll: Collectives | None = None) -> tuple[Tensor, int]:
    """The first `rows` rows of the (global) stream, on every rank, and the batches drawn here.

    Data parallel: each rank draws batches until the global batches drawn hold `rows` rows; the
    ranks' rows are gathered and put back in global-batch order (batch 0 of rank 0, of rank 1,
    ..., batch 1 of rank 0, ...), so the held-out set is the one a single process reading the
    same global batches would take."""
    coll = coll or Collectives()
    parts, n, batches = [], 0, 0
    while n < rows:
        batch = next(it, None)
        if not coll.all_true(batch is not None):
            break
        x = batch_tensor(batch)
        parts.append(x.to("cpu", torch.float32))
        n += coll.global_rows(x.shape[0])
        batches += 1
    if n == 0:
        raise ValueError("the data source yielded no batches; check the cache / dataset")
    local_BD = torch.cat(parts)
    if coll.distributed:
        sizes = {p.shape[0] for p in parts}
        gathered_BD = coll.gather_rows(local_BD.to(coll.device)).cpu()  # type: ignore[attr-defined]
        W = coll.world_size
        if len(sizes) == 1 and gathered_BD.shape[0] == W * local_BD.shape[0]:
            b = parts[0].shape[0]
            gathered_BD = gathered_BD.view(W, batches, b, -1).transpose(0, 1).reshape(-1, local_BD.shape[1])
        local_BD = gathered_BD
    return local_BD[:rows], batches


def _gather_json(coll: Collectives, obj: Any) -> list[Any]:
    """Every rank's JSON-able `obj`, in rank order (sent as UTF-8 bytes; nothing is unpickled)."""
    import json

    raw = torch.frombuffer(bytearray(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8)
    pieces, _ = coll._all_gather_padded(raw.to(coll.device))  # type: ignore[attr-defined]
    return [json.loads(bytes(p.cpu().numpy().tobytes()).decode()) for p in pieces]


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (python, numpy, torch) at the start of a fresh run; a resume restores
    their saved states instead. Nothing in the trainer draws from them, but user code may."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _sae_metadata(prov: dict[str, Any]) -> dict[str, Any]:
    # model_name: the name SAELens users load the model by (hub name, local path), else our id
    keys = {"model_name": "model_name" if prov.get("model_name") else "model", "hook_name": "hook_name",
            "context_size": "context_size", "prepend_bos": "prepend_bos", "dataset_path": "dataset"}
    meta = {k: prov[src] for k, src in keys.items() if prov.get(src) is not None}
    if prov.get("model_identity") is not None:  # how to load the model: raw weights, or processed (SAELens's hint)
        from saes.identity import ModelIdentity

        meta["model_from_pretrained_kwargs"] = ModelIdentity.from_json(prov["model_identity"]).saelens_load_kwargs
    return meta


def _version() -> str:
    try:
        return importlib.metadata.version("saesteer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _find_resume(
    ckpt_root: Path, log: Callable[[str], None], coll: Collectives | None = None
) -> tuple[Path, dict[str, Any], dict[str, Tensor]] | None:
    """The newest readable checkpoint. Data parallel: rank 0 chooses it and every rank reads
    that one (across machines, the output folder must be on a shared filesystem)."""
    coll = coll or Collectives()
    found = None
    if coll.is_writer:
        for path in reversed(list_checkpoints(ckpt_root)):
            try:
                state, tensors = read_checkpoint(path)
            except CheckpointError as e:
                log(f"warning: skipping unreadable checkpoint: {e}")
                continue
            found = path, state, tensors
            break
    if not coll.distributed:
        return found
    step = coll.broadcast_int(int(found[1]["step"]) if found is not None else -1)
    if step < 0 or coll.is_writer:
        return found
    path = ckpt_root / checkpoint_name(step)
    if not path.is_dir():
        raise CheckpointError(f"rank {coll.rank}: rank 0 resumes from {path.name}, which this machine cannot see at {path}; "
                              f"put the output folder on a filesystem every machine shares")
    state, tensors = read_checkpoint(path)
    return path, state, tensors


def train(
    config: RunConfig,
    data: Iterable[Any],
    out_dir: str | os.PathLike,
    *,
    model_eval: ModelEval | None = None,
    provenance: dict[str, Any] | None = None,
    resume: Literal["auto", "never", "require"] = "auto",
    collectives: Collectives | None = None,
    on_step: Callable[[Trainer], None] | None = None,
) -> TrainResult:
    """Train every SAE of `config` on the batches of `data`, checkpointing into `out_dir`.

    data: iterable of [B, d_in] tensors or of objects with `.acts` (e.g. `CacheReader`). If it
        has `state_dict()` / `load_state_dict()`, checkpoints store its position and a resume
        continues exactly; otherwise a resume replays the source and skips the batches already
        trained on (exact only if the source is deterministic). The first
        `train.holdout_tokens` rows are never trained on (scale, b_dec, evaluation).
    out_dir: `checkpoints/`, `saes/<name>/`, `metrics.json`, `history.jsonl`,
        `training_curves.html`, `config.json` go here.
    model_eval: the loaded model and held-out contexts for CE loss recovered / KL.
    provenance: recorded with each SAE: model, hook_name, dataset, context_size, prepend_bos, ...
    resume: "auto" continues from the newest checkpoint in out_dir if there is one; "never"
        refuses an out_dir with checkpoints; "require" refuses one without.
    collectives: data-parallel communication (default: single process).
    on_step: called with the trainer after every step (progress hooks, tests).
    """
    t_start = time.perf_counter()
    coll = collectives or Collectives()
    writer = coll.is_writer
    out = Path(out_dir)
    ckpt_root = out / CHECKPOINT_DIR
    prov = dict(provenance or {})
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    lock = None
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock_out_dir(out)
        clean_temporaries(ckpt_root)
        _clean_sae_leftovers(out / SAE_DIR)
    try:
        return _train_locked(config, data, out, coll, prov, model_eval, resume, on_step, t_start)
    finally:
        if lock is not None:
            lock.close()


def _clean_sae_leftovers(sae_root: Path) -> None:
    """Remove the temporary folders of SAE saves that a kill interrupted (`.<name>.tmp-*`)."""
    if sae_root.is_dir():
        for p in sae_root.glob(".*.tmp-*"):
            remove_save_leftovers(sae_root / p.name[1:].rsplit(".tmp-", 1)[0])


def _lock_out_dir(out: Path):
    """Hold an exclusive lock on the output folder for the run (two runs must not share it)."""
    import fcntl

    f = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise FileExistsError(f"another training run is using {out} (it holds {out / LOCK_FILE}); wait for it to "
                              f"finish or choose another output folder") from None
    return f


def _train_locked(
    config: RunConfig, data: Iterable[Any], out: Path, coll: Collectives, prov: dict[str, Any],
    model_eval: ModelEval | None, resume: str, on_step: Callable[[Trainer], None] | None, t_start: float,
) -> TrainResult:
    writer = coll.is_writer
    ckpt_root = out / CHECKPOINT_DIR

    found = _find_resume(ckpt_root, print, coll) if resume != "never" else None
    if resume == "never" and coll.broadcast_int(len(list_checkpoints(ckpt_root)) if writer else 0):
        raise FileExistsError(f"{out} already holds checkpoints of a run; choose another output folder or resume it")
    if resume == "require" and found is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_root}")
    if found is not None:
        diffs = config_differences(found[1]["config"], config.to_dict())
        if diffs:
            raise ConfigMismatchError(
                f"cannot resume {found[0]}: the config differs from the checkpoint's in\n  - " + "\n  - ".join(diffs)
                + "\nuse the original settings (saved in the checkpoint and in config.json), or a new output folder"
            )

    it = iter(data)
    holdout_BD, holdout_batches = _draw_holdout(it, config.train.holdout_tokens, coll)
    if not bool(torch.isfinite(holdout_BD).all()):
        bad = int((~torch.isfinite(holdout_BD)).any(dim=1).sum())
        raise DataError(
            f"{bad} of the first {holdout_BD.shape[0]:,} rows of the data (held out for scaling and evaluation) hold "
            f"NaN or infinite activations{' (from ' + str(prov['cache']) + ')' if prov.get('cache') else ''}: the "
            f"activations overflowed when they were cached (fp16?) or the cache is corrupt; rebuild it (e.g. with "
            f"dtype bf16 or fp32)")
    trainer = Trainer(config, holdout_BD.shape[1], collectives=coll, sae_metadata=_sae_metadata(prov))
    stateful = hasattr(data, "state_dict") and hasattr(data, "load_state_dict")

    resumed_from = None
    if found is not None:
        resumed_from, state, tensors = found
        data_state = trainer.restore(state, tensors)
        fresh_scale = estimate_activation_scale(holdout_BD) if config.train.normalize_activations else 1.0
        if not math.isclose(fresh_scale, trainer.scale, rel_tol=1e-6):
            print(f"warning: the data's held-out rows differ from the original run's (scale {fresh_scale:.6g} vs "
                  f"{trainer.scale:.6g}); is it the same data source and seed?")
        if data_state.get("kind") in ("state_dict", "per_rank"):
            if not stateful:
                raise CheckpointError("the checkpoint stores a reader position but this data source has no load_state_dict()")
            try:
                if data_state["kind"] == "per_rank":
                    states = data_state["states"]
                    if len(states) != coll.world_size:
                        raise CheckpointError(
                            f"the checkpoint holds the reader positions of {len(states)} ranks, each reading its own "
                            f"shards; resume with {len(states)} processes (torchrun --nproc-per-node ...), or start a "
                            f"new run")
                    data.load_state_dict(states[coll.rank])  # type: ignore[attr-defined]
                else:
                    data.load_state_dict(data_state["state"])  # type: ignore[attr-defined]
            except SaesteerError as e:
                raise ConfigMismatchError(f"cannot resume {resumed_from}: {e.message}", field=e.field) from None
            it = iter(data)
        else:
            for _ in range(int(data_state["batches"])):
                if next(it, None) is None:
                    break
        if writer:
            truncate_history(out, trainer.step)
    else:
        seed_everything(config.train.seed)
        trainer.initialize(holdout_BD)
        if writer:
            truncate_history(out, 0)
    if writer:
        from saes.fileio import atomic_write_json

        atomic_write_json(out / CONFIG_FILE, config.to_dict())

    wandb_cfg = None
    if config.log.wandb:
        wandb_cfg = {"project": config.log.wandb_project, "entity": config.log.wandb_entity,
                     "name": config.log.wandb_name, "config": {**config.to_dict(), "data": prov}}
    logger = RunLogger(out, total_tokens=config.train.total_tokens, start_tokens=trainer.tokens,
                       progress=config.log.progress, wandb_cfg=wandb_cfg, enabled=writer)
    batches_trained = trainer.step  # for sources without state: batches after the holdout
    if resumed_from is not None:
        logger.message(f"resumed from {resumed_from.name} at {trainer.tokens:,} tokens")

    def data_state() -> dict[str, Any]:
        if stateful:
            mine = data.state_dict()  # type: ignore[attr-defined]
            if coll.distributed:  # every rank's position (they differ when ranks read their own shards)
                states = _gather_json(coll, mine)
                if any(st != states[0] for st in states):
                    return {"kind": "per_rank", "states": states}
            return {"kind": "state_dict", "state": mine}
        return {"kind": "skip", "batches": batches_trained}

    def save_checkpoint() -> Path | None:
        ds = data_state()  # a collective: every rank calls it
        if not writer:
            return None
        logger.flush()
        state, tensors = trainer.checkpoint_payload(ds)
        path = write_checkpoint(ckpt_root, trainer.step, state, tensors)
        prune_checkpoints(ckpt_root, config.checkpoint.keep_last)
        return path

    def every(n: int, before: int, after: int) -> bool:
        return n > 0 and after // n > before // n

    stopped_early = None
    ckpt_due = False
    last_ckpt_step = trainer.step
    last_log = (time.perf_counter(), trainer.tokens)
    try:
        while trainer.tokens < config.train.total_tokens:
            batch = next(it, None)
            if not coll.all_true(batch is not None):  # data parallel: every rank stops together
                stopped_early = f"the data ran out after {trainer.tokens:,} training tokens"
                logger.message(f"warning: {stopped_early} (asked for {config.train.total_tokens:,})")
                break
            before = trainer.tokens
            t0 = time.perf_counter()
            x_BD, stats = trainer.train_batch(batch)
            trainer.train_seconds += time.perf_counter() - t0
            batches_trained += 1
            _handle_skips(trainer, stats, logger, ckpt_root)
            if trainer.step % config.log.log_every == 0 or trainer.tokens >= config.train.total_tokens:
                now = time.perf_counter()
                rate = (trainer.tokens - last_log[1]) / max(now - last_log[0], 1e-9)
                last_log = (now, trainer.tokens)
                rec = _train_record(trainer, x_BD, stats, rate)
                logger.record(rec)
                first = trainer.members[0].name
                logger.advance(0, {"loss": f"{rec.get(f'{first}/loss', float('nan')):.4g}",
                                   "fvu": f"{rec.get(f'{first}/fvu', float('nan')):.3f}"})
            logger.advance(trainer.tokens - before)
            if writer and every(config.eval.every_tokens, before, trainer.tokens) and trainer.tokens < config.train.total_tokens:
                ev = trainer.evaluate(holdout_BD, model_eval if config.eval.ce_during_training else None)
                logger.record(_eval_record(trainer, ev))
            if every(config.checkpoint.every_tokens, before, trainer.tokens) and trainer.tokens < config.train.total_tokens:
                ckpt_due = True
            # during a run of skipped (non-finite) steps, checkpoints wait for the next good step
            if ckpt_due and not any(m.consecutive_nonfinite for m in trainer.members):
                save_checkpoint()
                last_ckpt_step, ckpt_due = trainer.step, False
            if on_step is not None:
                on_step(trainer)
        final_due = trainer.step != last_ckpt_step or not list_checkpoints(ckpt_root)
        if coll.broadcast_int(int(final_due)):  # rank 0 decides (its folder); all take part
            save_checkpoint()
    finally:
        logger.close()

    result = _finish(trainer, out, holdout_BD, model_eval, prov, stopped_early, time.perf_counter() - t_start, writer)
    result.resumed_from = resumed_from
    return result


def _handle_skips(trainer: Trainer, stats: dict[str, StepStats], logger: RunLogger, ckpt_root: Path) -> None:
    for m in trainer.members:
        st = stats[m.name]
        if not st.skipped:
            continue
        loss, norm = float(st.loss), float(st.grad_norm)
        logger.record({"kind": "skip", "step": trainer.step, "tokens": trainer.tokens, "sae": m.name,
                       "loss": loss, "grad_norm": norm})
        logger.message(f"step {trainer.step}: {m.name} had a non-finite loss ({loss}) or gradient norm ({norm}); "
                       f"step skipped ({m.consecutive_nonfinite} in a row)")
        if m.consecutive_nonfinite >= trainer.config.train.max_nonfinite:
            last = list_checkpoints(ckpt_root)
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
            raise NonFiniteError(
                f"{m.name}: {m.consecutive_nonfinite} consecutive non-finite steps (train.max_nonfinite="
                f"{trainer.config.train.max_nonfinite}) at step {trainer.step}; stopping. {where}. Check the data for "
                f"NaN/Inf activations, or lower the learning rate / enable --grad-clip."
            )


def _global_losses(trainer: Trainer, x_BD: Tensor, stats: dict[str, StepStats]) -> tuple[float, dict[str, list[float]]]:
    """The batch variance and (loss, mse, aux) of every SAE over the global batch: local row
    means weighted by rows and summed over ranks (one all-reduce; identity in one process)."""
    coll = trainer.coll
    x = x_BD.double()
    n = x.shape[0]
    if not coll.distributed:
        var = float((x - x.mean(0)).pow(2).sum(1).mean())
        return var, {m.name: [float(stats[m.name].loss), float(stats[m.name].mse), float(stats[m.name].aux)]
                     for m in trainer.members}
    head = [torch.tensor([float(n), float(x.pow(2).sum())], dtype=torch.float64, device=x.device), x.sum(0)]
    per = [torch.stack([stats[m.name].loss, stats[m.name].mse, stats[m.name].aux]).double().to(x.device) * n
           for m in trainer.members]
    buf = coll.sum_(torch.cat(head + per))
    N, S2, S1 = float(buf[0]), float(buf[1]), buf[2 : 2 + x.shape[1]]
    var = S2 / N - float(S1.pow(2).sum()) / N**2
    off = 2 + x.shape[1]
    return var, {m.name: [float(v) / N for v in buf[off + 3 * i : off + 3 * i + 3]] for i, m in enumerate(trainer.members)}


def _train_record(trainer: Trainer, x_BD: Tensor, stats: dict[str, StepStats], rate: float) -> dict[str, Any]:
    var, losses = _global_losses(trainer, x_BD, stats)
    factor = lr_factor(trainer.step - 1, trainer.total_steps, trainer.config.optim)
    rec: dict[str, Any] = {"kind": "train", "step": trainer.step, "tokens": trainer.tokens, "lr_factor": factor,
                           "tokens_per_second": rate}
    for m in trainer.members:
        st = stats[m.name]
        p = f"{m.name}/"
        loss, mse, aux = losses[m.name]
        rec.update({p + "loss": loss, p + "mse": mse, p + "aux": aux,
                    p + "fvu": mse / var if var > 0 else float("nan"), p + "grad_norm": float(st.grad_norm),
                    p + "dead_fraction": trainer.dead_fraction(m), p + "lr": m.lr * factor})
        if st.fired_F is not None:
            rec[p + "l0"] = float(st.fired_F.sum()) / max(1, trainer.coll.global_rows(x_BD.shape[0]))
        if st.level_mse is not None:
            rec[p + "level_mse"] = [float(v) for v in st.level_mse]
    return rec


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _rewrite_history(out: Path, records: list[dict[str, Any]]) -> None:
    import json

    from saes.fileio import atomic_write_bytes

    atomic_write_bytes(out / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in records).encode())


def _eval_record(trainer: Trainer, ev: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "eval", "step": trainer.step, "tokens": trainer.tokens}
    for name, metrics in ev.items():
        for k, v in metrics.items():
            rec[f"{name}/{k}"] = v
    return rec


def _finish(
    trainer: Trainer, out: Path, holdout_BD: Tensor, model_eval: ModelEval | None, prov: dict[str, Any],
    stopped_early: str | None, wall: float, writer: bool,
) -> TrainResult:
    cfg = trainer.config
    commit = git_commit()
    sae_dirs: dict[str, Path] = {}
    saes: dict[str, SAE] = {}
    per_sae: dict[str, dict[str, Any]] = {}
    for m in trainer.members:
        sae = trainer.folded_sae(m)
        if not writer:  # data parallel: rank 0 evaluates and writes; the others return the weights
            saes[m.name] = sae
            continue
        metrics = evaluate_activations(sae, holdout_BD, dense_threshold=cfg.eval.dense_threshold)
        metrics["dead_fraction"] = trainer.dead_fraction(m)
        metrics["dead_window_tokens"] = trainer.dead_window
        if model_eval is not None and cfg.eval.ce_contexts > 0:
            metrics.update(model_eval.run(sae_reconstructor(sae), cfg.eval).to_dict())
        info = {"folder": f"{SAE_DIR}/{m.name}", "architecture": m.spec.architecture, "d_in": trainer.d_in,
                "d_sae": m.spec.d_sae, "k": m.spec.k, "lr": m.lr, "skipped_steps": m.skipped_steps}
        if sae.levels is not None:
            info["matryoshka_widths"] = sae.levels
        per_sae[m.name] = {**info, **metrics}
        saes[m.name] = sae
        if writer:
            provenance = {
                "tool": "saesteer", "saesteer_version": _version(), "git_commit": commit,
                "model": prov.get("model"), "model_identity": prov.get("model_identity"),
                "hook_name": prov.get("hook_name"), "dataset": prov.get("dataset"),
                "tokens_trained": trainer.tokens, "steps": trainer.step, "activation_scale": trainer.scale,
                "activation_scale_folded": True, "step_method": trainer.step_method,
                "training": {"sae": m.spec.__dict__, "train": cfg.train.__dict__, "optim": cfg.optim.__dict__},
                "data": prov, "metrics": metrics,
            }
            sae_dirs[m.name] = save_sae(sae, out / SAE_DIR / m.name, provenance=provenance)
    metrics_doc = {
        "tokens_trained": trainer.tokens, "steps": trainer.step, "holdout_rows": int(holdout_BD.shape[0]),
        "activation_scale": trainer.scale, "step_method": trainer.step_method, "world_size": trainer.coll.world_size,
        "wall_seconds": wall,
        "train_seconds": trainer.train_seconds,
        "tokens_per_second": trainer.tokens / trainer.train_seconds if trainer.train_seconds > 0 else None,
        "stopped_early": stopped_early, "git_commit": commit, "data": prov, "config": cfg.to_dict(), "saes": per_sae,
    }
    if writer:
        write_metrics(out, metrics_doc)
        history = [r for r in read_history(out) if not r.get("final")]
        history.append({**_eval_record(trainer, {n: _scalars(v) for n, v in per_sae.items()}), "final": True})
        _rewrite_history(out, history)
        write_curves_html(out, history, [m.name for m in trainer.members])
    return TrainResult(out, sae_dirs, metrics_doc, trainer.tokens, trainer.step, None, stopped_early, saes)
