"""Run a model and read hook points: the activation runner of the cache, the live batches and the
evaluation (`ActivationRunner`).

The forward pass stops right after the last needed hook point fires (and `stop_at_layer` skips
the blocks after it), so reading layer 1 of a 12-layer model costs 2 blocks. The model is an
already loaded TransformerLens `HookedTransformer` (anything with `hook_dict`, `hooks()`,
`cfg.n_ctx` and a `stop_at_layer` forward argument); this module does not import
transformer_lens. Hook names are checked by `saes.hookpoints`.

Shape key: B batch (contexts), L context length, D d_in.
"""

from __future__ import annotations

import re
import warnings
from typing import Sequence

import torch

from saes.errors import SaesteerError
from saes.hookpoints import UnknownHookError, check_hooks, model_device, opt_in_hooks
from saes.precision import matmul_rounding
from saes.validators import one_of, require
from training.cache_config import FORWARD_NAMES
from training.fast_forward import FastForward, NotSupported


def stop_layer(model, hooks: Sequence[str]) -> int | None:
    """Blocks to run (`stop_at_layer`) so that every hook fires; None means the whole model."""
    need = -1
    for h in hooks:
        m = re.match(r"^blocks\.(\d+)\.", h)
        if m:
            need = max(need, int(m.group(1)) + 1)
        elif h in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            need = max(need, 0)
        else:
            return None  # e.g. ln_final.*: run everything
    return need if need >= 0 else None


class _StopForward(Exception):
    pass


# modules whose functions TransformerBridge / transformers register as standing hooks on a model
# (output capture); hooks from anywhere else (TransformerLens hook points, steering, users) count
_LIBRARY_HOOK_MODULES = ("transformers.", "transformer_lens.model_bridge.")


def _library_hook(fn) -> bool:
    return str(getattr(fn, "__module__", None) or "").startswith(_LIBRARY_HOOK_MODULES)


# relative tolerance of the fast forward's check: max |fast - TL| <= tol * max |TL| per hook, by the
# rounding of the products in force (saes.precision: float32 under TF32 takes float16's)
FAST_CHECK_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class FastForwardMismatch(SaesteerError, ValueError, RuntimeError):
    """`forward="fast"` was asked for, but the fast forward does not cover the model or its
    activations differ from TransformerLens's beyond rounding."""


class ActivationRunner:
    """Runs `model` on token batches and returns the activations of `hooks`, stopping the
    forward pass as soon as the last of them has fired.

    `run(tokens_BL)` -> {hook: acts [B, L, D]} (trailing dims flattened into D, e.g. hook_z).

    `forward` picks the forward pass: "transformer_lens" runs the model itself, with our hooks
    added for each call inside TransformerLens's scoped `hooks()` context; "fast" runs
    `training.fast_forward.FastForward` (fused ops, same values up to rounding) and fails when
    the model is not covered or the check below fails; "auto" (default) uses the fast forward
    when it covers the model and passes the check, else TransformerLens's (with a warning when
    the check failed). The check, once per context length: both forwards on a fixed probe batch
    (seeded random tokens, BOS first when the tokenizer has one), every hook's max abs
    difference within `FAST_CHECK_TOLERANCE` x its max abs activation, and every token's
    difference within that fraction of the token's norm (so an outsized activation, e.g. at BOS,
    cannot hide an error elsewhere). The probe does not
    depend on the data, so the choice depends only on the model, hooks and context length (a
    resumed cache makes the same choice). Batches run while hooks are attached to the model
    (e.g. a steering intervention) always use TransformerLens's forward, so those hooks act."""

    def __init__(self, model, hooks: Sequence[str], forward: str = "auto"):
        one_of("CacheConfig", "forward", forward, FORWARD_NAMES)
        self.model = model
        self.hooks = check_hooks(model, hooks, per_token=True)
        self.stop_at_layer = stop_layer(model, self.hooks)
        self.n_ctx = int(model.cfg.n_ctx)
        self.device = model_device(model)
        self.forward = forward
        self.fast: FastForward | None = None
        self.fast_problem: str | None = None  # why the fast forward is not used (None: it is, or not asked)
        self._fast_ok: dict[int, bool] = {}  # context length -> the check passed
        if forward != "transformer_lens":
            try:
                self.fast = FastForward(model, self.hooks)
            except NotSupported as e:
                self.fast_problem = f"not covered by the fast forward: {e}"
                if forward == "fast":
                    raise FastForwardMismatch(f"CacheConfig.forward fast: {self.fast_problem}; use CacheConfig.forward "
                                              f"auto or transformer_lens", field="forward") from None

    def check_context_length(self, context_length: int) -> None:
        require(context_length <= self.n_ctx,
                f"TextConfig.context_length {context_length} is longer than the model's context window (n_ctx "
                f"{self.n_ctx}); use TextConfig.context_length {self.n_ctx} or less", field="context_length")

    def forward_used(self, context_length: int) -> str:
        """"fast" or "transformer_lens": the forward that computes batches of this length
        (runs the check when it has not run yet)."""
        return "fast" if self._use_fast(context_length) else "transformer_lens"

    def pin_forward(self, name: str, context_length: int) -> None:
        """Use `name` for batches of `context_length` from now on (a resumed cache keeps the
        forward its first shards were made with). Pinning "fast" where it is not available is
        an error."""
        if name == "fast":
            if self.fast is None:
                raise FastForwardMismatch(f"the fast forward is not available for this model ({self.fast_problem})",
                                          field="forward")
            self._fast_ok[context_length] = True
        else:
            self._fast_ok[context_length] = False

    def _use_fast(self, L: int) -> bool:
        if self.fast is None:
            return False
        ok = self._fast_ok.get(L)
        if ok is None:
            ok = self._fast_ok[L] = self._check_fast(L)
        return ok

    def _probe(self, L: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        vocab = int(getattr(self.model.cfg, "d_vocab", 0) or 2)
        toks = torch.randint(0, vocab, (2, L), generator=g)
        bos = getattr(getattr(self.model, "tokenizer", None), "bos_token_id", None)
        if isinstance(bos, int) and 0 <= bos < vocab:
            toks[:, 0] = bos
        return toks

    def _check_fast(self, L: int) -> bool:
        """Run both forwards on the probe batch of length L: True when they agree (see the class doc)."""
        toks = self._probe(L)
        try:
            fast = self.fast(toks)
        except NotSupported as e:
            problem = f"not covered by the fast forward: {e}"
        except Exception as e:  # a gap in the fast forward must cost speed, never the cache
            problem = f"the fast forward failed on the check batch ({type(e).__name__}: {e})"
        else:
            problem = self._difference(fast, self._run_tl(toks))
        if problem is None:
            return True
        self.fast_problem = problem
        if self.forward == "fast":
            raise FastForwardMismatch(f"CacheConfig.forward fast: {problem}; use CacheConfig.forward "
                                      f"transformer_lens", field="forward")
        warnings.warn(f"{problem}; using TransformerLens's forward instead", RuntimeWarning, stacklevel=3)
        return False

    def _difference(self, fast: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> str | None:
        """Why the fast forward's activations are not TransformerLens's up to rounding (None: they are)."""
        for h in self.hooks:
            if fast[h].numel() != ref[h].numel():
                return (f"the fast forward gives {h} the shape {tuple(fast[h].shape)}, TransformerLens "
                        f"{tuple(ref[h].shape)}")
            a, b = ref[h].float(), fast[h].reshape(ref[h].shape).float()
            # as coarse as the products' rounding in force (TF32 on a GPU: float16's)
            rel = FAST_CHECK_TOLERANCE.get(matmul_rounding(ref[h].dtype, ref[h].device), 5e-2)
            tol = rel * max(a.abs().max().item(), 1e-30)
            diff = (a - b).abs().max().item()
            # per token too: one huge activation (e.g. at BOS) must not hide errors elsewhere
            a_T, d_T = a.flatten(2).norm(dim=-1), (a - b).flatten(2).norm(dim=-1)
            token_rel = (d_T / a_T.clamp_min(0.1 * a_T.median().item() + 1e-30)).max().item()
            if not (diff <= tol and token_rel <= rel):
                return (f"the fast forward differs from TransformerLens's at {h} by {diff:.3g} (allowed {tol:.3g}; "
                        f"worst token {token_rel:.3g} of its norm, allowed {rel:g}) on the check batch")
        return None

    def _hooks_attached(self) -> bool:
        """Any forward (pre-)hook on any module of the model (TransformerLens hook points or plain
        torch module hooks): the fast forward would skip them, so such batches run through TL.

        Hooks the libraries keep on the model for themselves do not count: TransformerBridge and
        transformers install capture hooks on the HF modules at the first forward and leave them
        there (they do not change outputs), which sent every later batch of an HF model through
        the slow forward while the estimate said "fast"."""
        return any(not _library_hook(fn) for m in self.model.modules()
                   for fn in (*m._forward_hooks.values(), *m._forward_pre_hooks.values()))

    def run(self, tokens_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        B, L = tokens_BL.shape
        self.check_context_length(L)
        if self._use_fast(L) and not self._hooks_attached():
            captured = self.fast(tokens_BL)
        else:
            captured = self._run_tl(tokens_BL)
        out = {}
        for h in self.hooks:
            a = captured.get(h)
            if a is None:
                raise RuntimeError(f"hook point {h} did not fire during the forward pass")
            if a.shape[:2] != (B, L):
                raise UnknownHookError(f"hook point {h} gives shape {tuple(a.shape)}, not [batch, position, ...]; it cannot be cached per token")
            out[h] = a.reshape(B, L, -1)
        return out

    def _run_tl(self, tokens_BL: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        need = len(self.hooks)

        def grabber(name: str):
            # keyed by the name we asked for: TransformerBridge fires hooks under canonical names
            def grab(act, hook):
                captured[name] = act
                if len(captured) == need:
                    raise _StopForward
            return grab

        was_training = self.model.training
        self.model.eval()
        try:
            # an opt-in hook point (hook_mlp_in, ...) is switched on for this forward pass only
            with torch.inference_mode(), opt_in_hooks(self.model, self.hooks), \
                    self.model.hooks(fwd_hooks=[(h, grabber(h)) for h in self.hooks]):
                try:
                    self.model(tokens_BL.to(self.device), return_type=None, stop_at_layer=self.stop_at_layer)
                except _StopForward:
                    pass
        finally:
            if was_training:
                self.model.train()
        return captured

    def d_in(self, context_length: int = 2) -> dict[str, int]:
        """Width of each hook's per-token vector (runs one tiny forward pass)."""
        L = max(1, min(context_length, self.n_ctx))
        acts = self.run(torch.zeros(1, L, dtype=torch.long))
        return {h: int(a.shape[-1]) for h, a in acts.items()}
