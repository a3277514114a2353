"""Evaluation of an SAE: on activations (no model needed) and spliced into the model.

Shape key: B rows, D d_in, F d_sae, L levels (Matryoshka), N contexts, S sequence, V vocab.

`evaluate_activations` - the SAE in its inference form (TopK per token; BatchTopK / Matryoshka
through their per-latent thresholds) over held-out rows:
    explained_variance  1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2  (mean over the whole set)
    mse                 mean over rows of sum_d (x - x_hat)^2, in the units of the raw activations
    l0                  mean number of active latents per row
    eval_dead_fraction  latents that never fire on the held-out rows
    dense_fraction      latents firing on more than `dense_threshold` of the rows
    levels              Matryoshka: the same EV / mse / l0 for each nested prefix (innermost first)

`splice_metrics` - the reconstruction replaces the hook activation in the model's forward pass
(TransformerLens hooks, scoped with `model.hooks(...)`), next-token cross-entropy over every
predicted position:
    ce_loss_clean, ce_loss_spliced, ce_loss_zero (activation zeroed)
    ce_loss_recovered   (ce_zero - ce_spliced) / (ce_zero - ce_clean): 1 = as good as the model
    kl_div              mean over positions of KL(clean next-token distribution || spliced)
Positions whose token is in `keep_token_ids` (e.g. BOS, when the cache left it out) keep their
clean activation in both the spliced and the zero-ablated run.

A transcoder (`input_hook=`): in the same forward pass its input hook's activation is captured and
the target hook's output is replaced by the transcoder's prediction from it (e.g. the MLP's output
replaced by the transcoder's: the transcoder in place of the MLP); the zero-ablated run zeroes the
target (the MLP ablated), so ce_loss_recovered is measured against the MLP-ablated model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from saes import SAE
from saes.hookpoints import NotEditableHookError, check_editable_hook, model_device, opt_in_flag, opt_in_hooks


class _Accum:
    """Float64 running sums for EV / MSE over a stream of batches."""

    def __init__(self, d_in: int, device: torch.device) -> None:
        self.n = 0
        self.sum_D = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros((), dtype=torch.float64, device=device)
        self.resid = torch.zeros((), dtype=torch.float64, device=device)

    def add_data(self, x_BD: Tensor) -> None:
        x = x_BD.double()
        self.n += x.shape[0]
        self.sum_D += x.sum(0)
        self.sumsq += x.pow(2).sum()

    def total_variance(self) -> float:
        return float(self.sumsq - self.sum_D.pow(2).sum() / max(self.n, 1))

    def ev(self, resid: Tensor) -> float:
        tv = self.total_variance()
        return 1.0 - float(resid) / tv if tv > 0 else float("nan")


@torch.no_grad()
def evaluate_activations(
    sae: SAE,
    batches: Tensor | Iterable[Tensor],
    *,
    scale: float = 1.0,
    dense_threshold: float = 0.1,
    chunk_rows: int = 4096,
    targets: Tensor | Iterable[Tensor] | None = None,
    target_scale: float | None = None,
) -> dict[str, Any]:
    """Metrics of `sae` on raw activations `batches` ([R, D] tensor or iterable of [B, D]).

    `scale`: the SAE reads `scale * x` (an SAE under training, before the scale is folded in);
    mse is reported in raw units either way. A transcoder is scored against `targets` (the target
    hook's rows paired with `batches`; `target_scale`: its prediction is of `target_scale * y`)."""
    if sae.is_transcoder and targets is None:
        raise ValueError("a transcoder is evaluated against its target rows: pass targets=")
    if isinstance(batches, Tensor):
        batches = batches.split(chunk_rows)
    if isinstance(targets, Tensor):
        targets = targets.split(chunk_rows)
    out_scale = scale if target_scale is None else target_scale
    dev = sae.device
    acc = _Accum(sae.d_out, dev)
    fires_F = torch.zeros(sae.d_sae, dtype=torch.float64, device=dev)
    widths = sae.levels
    level_resid = torch.zeros(len(widths) if widths else 0, dtype=torch.float64, device=dev)
    level_l0 = torch.zeros_like(level_resid)
    pairs = zip(batches, targets) if targets is not None else ((x, x) for x in batches)
    for x, goal in pairs:
        x_BD = x.to(device=dev, dtype=torch.float32)
        y_BD = goal.to(device=dev, dtype=torch.float32) if targets is not None else x_BD
        acc.add_data(y_BD)
        x_in = x_BD * scale if scale != 1.0 else x_BD
        acts = sae.encode_sparse(x_in)
        skip_BD = sae.skip_term(x_in)
        active_N = acts.values_N != 0
        fires_F += torch.bincount(acts.indices_N[active_N], minlength=sae.d_sae).double()
        recon = _reconstruction(sae, acts, skip_BD, y_BD, out_scale, level_resid, level_l0)
        acc.resid += (y_BD - recon / out_scale).double().pow(2).sum()
    n = max(acc.n, 1)
    freq_F = fires_F / n
    out: dict[str, Any] = {
        "explained_variance": acc.ev(acc.resid),
        "mse": float(acc.resid) / n,
        "l0": float(fires_F.sum()) / n,
        "eval_dead_fraction": float((fires_F == 0).double().mean()),
        "dense_fraction": float((freq_F > dense_threshold).double().mean()),
        "eval_rows": acc.n,
    }
    if widths:
        out["levels"] = [
            {"width": w, "explained_variance": acc.ev(level_resid[j]), "mse": float(level_resid[j]) / n,
             "l0": float(level_l0[j]) / n}
            for j, w in enumerate(widths)
        ]
    return out


def _reconstruction(sae: SAE, acts: Any, skip_BD: Tensor | None, y_BD: Tensor, out_scale: float,
                    level_resid: Tensor, level_l0: Tensor) -> Tensor:
    """The SAE's reconstruction (skip term included); a Matryoshka SAE also adds each level's
    residual and L0 to `level_resid` / `level_l0`."""
    widths = sae.levels
    if not widths:
        return sae.decode(acts) if skip_BD is None else sae.decode(acts) + skip_BD
    active_N = acts.values_N != 0
    recons = [r if skip_BD is None else r + skip_BD for r in sae.level_reconstructions(acts)]
    for j, r in enumerate(recons):
        level_resid[j] += (y_BD - r / out_scale).double().pow(2).sum()
        level_l0[j] += (active_N & (acts.indices_N < widths[j])).sum()
    return recons[-1]


def sae_reconstructor(sae: SAE, scale: float = 1.0, target_scale: float | None = None) -> Callable[[Tensor], Tensor]:
    """x [..., D] (or [B, S, heads, d_head] at a head hook) -> the SAE's reconstruction of x in raw
    units, same shape (the SAE reads scale * x). A transcoder: x is its input hook's activation and
    the answer its prediction of the target [..., d_out] (`target_scale`: of target_scale * y)."""
    out_scale = scale if target_scale is None else target_scale

    def reconstruct(x: Tensor) -> Tensor:
        # the model may sit on another device than the SAE (e.g. `saesteer train --device cuda` loads
        # the CE-evaluation model on the CPU): read x where the SAE is, answer where x is
        shape = x.shape
        if x.ndim > 3:  # [batch, pos, heads, d_head] (attn.hook_z, ...): the SAE reads the heads flattened
            x = x.reshape(*shape[:2], -1)
        x_in = x.to(sae.device, sae.dtype)
        if scale != 1.0:
            x_in = x_in * scale
        out = (sae(x_in).recon / out_scale).to(x.device, x.dtype)
        return out.reshape(shape) if not sae.is_transcoder else out.reshape(*x.shape[:-1], sae.d_out)

    return reconstruct


class SpliceMetrics(NamedTuple):
    ce_loss_clean: float
    ce_loss_spliced: float
    ce_loss_zero: float
    ce_loss_recovered: float
    kl_div: float

    def to_dict(self) -> dict[str, float]:
        return self._asdict()


# logits elements one forward pass of the CE/KL splice may return (256 MB in float32): its clean and
# spliced logits [contexts, positions, vocab] are held together, so at a large vocabulary fewer contexts
# than `batch_size` go through the model at once (16 x 128 x Gemma's 262k: 2.1 GB each; 2 contexts here)
_LOGITS_PASS_ELEMS = 1 << 26
# positions whose float32 log-softmax is taken at once (~16 MB): a whole chunk's [contexts, positions,
# vocab] in float32 is 2 GB at 16 x 128 x Gemma's 262k, and the eager formula made ~5 of them
_CE_CHUNK_ELEMS = 1 << 22


def _next_token_ce_kl(logits_NSV: Tensor, tokens_NS: Tensor, ref_logits_NSV: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Summed CE over predicted positions and (against ref, the clean pass's logits) summed KL(ref || this),
    a few positions at a time: what the log-softmax of the whole [N, S, V] gives, without making it."""
    N, S, V = logits_NSV.shape
    step = max(1, _CE_CHUNK_ELEMS // V)
    ce = torch.zeros((), dtype=torch.float64, device=logits_NSV.device)
    kl = None if ref_logits_NSV is None else torch.zeros_like(ce)
    for n in range(N):
        for s0 in range(0, S - 1, step):
            s1 = min(S - 1, s0 + step)
            logp = F.log_softmax(logits_NSV[n, s0:s1].float(), dim=-1)
            ce -= logp.gather(-1, tokens_NS[n, s0 + 1:s1 + 1, None]).sum()
            if kl is not None:
                ref = F.log_softmax(ref_logits_NSV[n, s0:s1].float(), dim=-1)
                kl += (ref.exp() * (ref - logp)).sum()
    return ce, kl


def splice_problem(model: Any, hook_name: str) -> str | None:
    """Why the CE/KL splice cannot replace `hook_name` on `model`, or None when it can: on a
    TransformerBridge `blocks.L.hook_resid_mid` is one module's input, so a splice there is another
    intervention (`check_editable_hook`). `saesteer train` and `saesteer eval` then leave the splice
    metrics out with this as their note; the SAE is still read and scored at that hook."""
    try:
        check_editable_hook(model, hook_name, "CE evaluation")
    except NotEditableHookError as e:
        return str(e)
    return None


class Splice(NamedTuple):
    """One SAE spliced into the model: `reconstruct(activation)` replaces `hook_name`'s output
    (`input_hook`: a transcoder's; `reconstruct` then reads that hook's activation of the same
    forward pass, and its answer replaces `hook_name`'s)."""

    reconstruct: Callable[[Tensor], Tensor]
    hook_name: str
    input_hook: str | None = None


@torch.no_grad()
def splice_metrics(
    model: Any,
    reconstruct: Callable[[Tensor], Tensor],
    hook_name: str,
    tokens_NS: Tensor,
    *,
    keep_token_ids: Iterable[int] = (),
    batch_size: int = 16,
    input_hook: str | None = None,
) -> SpliceMetrics:
    """CE loss recovered and KL when `reconstruct(activation)` replaces `hook_name`'s output
    (`input_hook`: a transcoder's; `reconstruct` then reads that hook's activation of the same
    forward pass, and its answer replaces `hook_name`'s).

    `model` is a TransformerLens HookedTransformer (or anything with `hook_dict`, `hooks()` and
    `__call__(tokens) -> logits`). An unknown hook name is an error."""
    return splice_metrics_many(model, [Splice(reconstruct, hook_name, input_hook)], tokens_NS,
                               keep_token_ids=keep_token_ids, batch_size=batch_size)[0]


@torch.no_grad()
def splice_metrics_many(model: Any, splices: Sequence[Splice], tokens_NS: Tensor, *, keep_token_ids: Iterable[int] = (),
                        batch_size: int = 16, progress: bool = False) -> list[SpliceMetrics]:
    """`splice_metrics` of several SAEs over the same contexts, each chunk's clean pass run once and
    its zero-ablated pass once per replaced hook: the figures of one call per SAE (the same forward
    passes, each run once). Splices whose hooks need other TransformerLens opt-in flags run their
    passes apart, each with its own flags on (`opt_in_hooks`), as a call of their own would.
    `batch_size`: contexts per forward pass, fewer where their logits would pass `_LOGITS_PASS_ELEMS`
    (a large vocabulary). `progress`: a bar (stderr) over the contexts."""
    for s in splices:
        check_editable_hook(model, s.hook_name, "CE/KL splicing")
        if s.input_hook is not None:
            from saes.hookpoints import check_transcoder_hooks

            check_transcoder_hooks(model, s.input_hook, s.hook_name)
    keep = torch.tensor(sorted(set(int(t) for t in keep_token_ids)), dtype=torch.long)
    tokens_NS = tokens_NS.long()
    if tokens_NS.ndim != 2 or tokens_NS.shape[1] < 2:
        raise ValueError(f"tokens must be [contexts, seq >= 2]; got shape {tuple(tokens_NS.shape)}")
    device = model_device(model)
    rows = _contexts_per_pass(model, tokens_NS.shape[1], batch_size)
    sums = [torch.zeros(5, dtype=torch.float64) for _ in splices]  # ce clean, spliced, zero, kl, positions
    by_flags: dict[frozenset, list[int]] = {}
    for i, s in enumerate(splices):
        by_flags.setdefault(frozenset(opt_in_flag(model, h) for h in _hooks_of(s)) - {None}, []).append(i)
    from tqdm.auto import tqdm

    with tqdm(total=len(by_flags) * len(tokens_NS), desc="CE/KL spliced", unit="context", disable=not progress) as bar:
        for idx in by_flags.values():
            # an opt-in hook point on for the clean pass too: all passes take the same forward path
            with opt_in_hooks(model, [h for i in idx for h in _hooks_of(splices[i])], "CE/KL splicing"):
                for chunk in tokens_NS.split(rows):
                    for i, got in zip(idx, _splice_chunk_sums(model, [splices[i] for i in idx], chunk.to(device), keep)):
                        sums[i] += got
                    bar.update(len(chunk))
    return [_splice_result(s) for s in sums]


def _contexts_per_pass(model: Any, seq: int, batch_size: int) -> int:
    """At most `batch_size` contexts of `seq` tokens, as many as keep one pass's logits within
    `_LOGITS_PASS_ELEMS` (never fewer than one): the logits held at once no longer grow with the batch."""
    cfg = getattr(model, "cfg", None)
    vocab = max(int(getattr(cfg, "d_vocab", 0) or 0), int(getattr(cfg, "d_vocab_out", 0) or 0))
    if vocab <= 0:  # a model that does not say: the batch as asked
        return batch_size
    return max(1, min(batch_size, _LOGITS_PASS_ELEMS // (seq * vocab)))


def _hooks_of(s: Splice) -> list[str]:
    return [s.hook_name] + ([s.input_hook] if s.input_hook is not None else [])


def _splice_result(sums: Tensor) -> SpliceMetrics:
    n = float(sums[4])
    clean_ce, spliced_ce, zero_ce, kl = (float(v) / n for v in sums[:4])  # per predicted position
    denom = zero_ce - clean_ce
    recovered = (zero_ce - spliced_ce) / denom if denom != 0 else float("nan")
    return SpliceMetrics(clean_ce, spliced_ce, zero_ce, recovered, kl)


def _splice_chunk_sums(model: Any, splices: Sequence[Splice], toks: Tensor, keep: Tensor) -> list[Tensor]:
    """One chunk's summed CE (clean, spliced, zero-ablated), summed KL and predicted positions, per
    splice: the clean pass once, the zero-ablated pass once per hook."""
    keep_NS = torch.isin(toks, keep.to(toks.device)) if keep.numel() else torch.zeros_like(toks, dtype=torch.bool)
    captured: dict[str, Tensor] = {}

    def capture(act: Tensor, hook: Any = None) -> None:
        captured["input"] = act

    def replace_with(fn: Callable[[Tensor], Tensor], hook_name: str, from_input: bool = False):
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            new = fn(captured.pop("input") if from_input else act)
            if new.shape != act.shape:
                raise ValueError(f"replacement for {hook_name} has shape {tuple(new.shape)}, expected {tuple(act.shape)}")
            mask = keep_NS.reshape(keep_NS.shape + (1,) * (act.ndim - 2))
            return torch.where(mask, act, new.to(act.dtype))

        return hook

    clean = model(toks)  # kept as the model gives it: its log-softmax is taken a chunk at a time
    ce_clean, _ = _next_token_ce_kl(clean, toks, None)
    zero_ce: dict[str, Tensor] = {}  # replaced hook -> CE with it zero-ablated
    out = []
    for s in splices:
        splice = [(s.hook_name, replace_with(s.reconstruct, s.hook_name, s.input_hook is not None))]
        with model.hooks(fwd_hooks=([(s.input_hook, capture)] if s.input_hook is not None else []) + splice):
            spliced = model(toks)
        ce_spliced, kl = _next_token_ce_kl(spliced, toks, clean)
        del spliced
        if s.hook_name not in zero_ce:
            with model.hooks(fwd_hooks=[(s.hook_name, replace_with(torch.zeros_like, s.hook_name))]):
                zero = model(toks)
            zero_ce[s.hook_name], _ = _next_token_ce_kl(zero, toks, None)
            del zero
        assert kl is not None
        out.append(torch.stack([ce_clean.double().cpu(), ce_spliced.double().cpu(), zero_ce[s.hook_name].double().cpu(),
                                kl.double().cpu(), torch.tensor(float(toks.shape[0] * (toks.shape[1] - 1)),
                                                                dtype=torch.float64)]))
    return out


@dataclass
class ModelEval:
    """What the CE-loss-recovered / KL evaluation of a training run needs: the loaded model and
    held-out contexts.

    `keep_token_ids`: positions holding these tokens keep their clean activation when the SAE is
    spliced in (use the cache's excluded tokens, e.g. BOS, which the SAE never trained on)."""

    model: Any
    hook_name: str
    tokens: Tensor  # [N, S] token ids
    keep_token_ids: tuple[int, ...] = ()
    input_hook: str | None = None  # transcoders: the hook they read (hook_name: the target they replace)

    def run(self, reconstructs: Sequence[Callable[[Tensor], Tensor]], eval_cfg: Any) -> list[SpliceMetrics]:
        """`splice_metrics_many` of every reconstruction (one per SAE of the run: the clean and
        zero-ablated passes run once for all of them) on the first `EvalConfig.ce_contexts`
        contexts (all when 0)."""
        toks = self.tokens[: eval_cfg.ce_contexts] if eval_cfg.ce_contexts else self.tokens
        return splice_metrics_many(self.model, [Splice(r, self.hook_name, self.input_hook) for r in reconstructs], toks,
                                   keep_token_ids=self.keep_token_ids, batch_size=eval_cfg.ce_batch_size)
