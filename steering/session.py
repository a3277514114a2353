"""`steer(model, saes, edits)`: a context manager that hooks the edits into a HookedTransformer.

Shape key: B batch, S positions, D width at the hook (heads flattened), N selected rows.

    from steering import steer, FeatureEdit
    with steer(model, sae, ["123:clamp=8", FeatureEdit(7, "add", 4.0, positions="generated")]) as s:
        out = model.generate("the ship", max_new_tokens=20)      # TransformerLens, KV cache on
        res = s.generate(["the ship", "a tree"], GenerationConfig(max_new_tokens=20, seed=1))

A transcoder's latent edits read its latents at its input hook (`metadata.hook_name`), captured in
the same forward pass, and add (edited - original latent) x decoder row to its target hook's output
(`metadata.hook_name_out`); the input hook's activation itself is left as it is.

Everything is checked before a hook is attached (`steering.resolve`); hooks are added with TransformerLens's `model.hooks(...)` plus a
forward pre-hook per block involved (to read the KV-cache length and attention mask) and a forward
hook after it (each of steering's hooks in the block ran, else a hook point was replaced or bypassed
since: `steering.saelens_splices.HookWatch` raises), and all of them are removed when the block
exits, whichever way it exits.

A forward run with autograd on (a plain `model(tokens)` outside `torch.no_grad()`) gets the same
values; the edit is computed outside autograd (no graph through the SAE: a TopK SAE's reads
could not be recorded, and the graph would only cost memory), and the gradient passes the hook
as if the edit were a constant added to the activation.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saes.hookpoints import model_device, opt_in_hooks
from steering.config import GenerationConfig
from steering.generation import Generation, generate, with_sae_bos
from steering.inputs import Model, SAEs, TypicalMaxArg, converted_saes, sae_mapping
from steering.interventions import LatentEditor, op_coefficients
from steering.lowprecision import sae_precision
from steering.positions import FULL, SequenceTracker, block_call_info, check_attention
from steering.presets import Preset
from steering.resolve import ResolvedEdit, check_models, resolve_edits, tracked_block
from steering.saelens_splices import HookWatch
from steering.spec import Edit, FeatureEdit, Positions, SteerLimits, SteeringError, VectorEdit
from steering.transcoder import InputCapture


# ------------------------------------------------------------------------------------- plan
class ConstantEditor:
    """Adds one fixed vector to every selected row (steering vectors, add-only latent edits)."""

    def __init__(self, vector_D: Tensor) -> None:
        self.d_in = self.d_out = int(vector_D.numel())
        self.const_D = vector_D.detach().reshape(-1)
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def constant(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (dtype, device)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self.const_D.to(device=device, dtype=dtype)
        return v

    def delta_or_none(self, x_ND: Tensor) -> Tensor:
        return self.constant(x_ND.dtype, x_ND.device).expand(x_ND.shape[0], -1)

    def apply(self, x_ND: Tensor) -> Tensor:
        return x_ND + self.constant(x_ND.dtype, x_ND.device)


@dataclass
class _Contribution:
    positions: Positions
    editor: LatentEditor | ConstantEditor
    label: str
    reads: InputCapture | None = None  # a transcoder's input hook: latents are read there, not at this hook


class _GradientToInput(torch.autograd.Function):
    """The hook's output `out` as is, with the gradient passed to its input `x` unchanged (the edit,
    computed outside autograd, counts as a constant added to the activation)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out: Tensor) -> Tensor:
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _HookFn:
    """The forward hook at one hook point: applies its contributions at their positions."""

    def __init__(self, hook_name: str, tracker: SequenceTracker | None, contribs: list[_Contribution]) -> None:
        self.hook_name = hook_name
        self.tracker = tracker
        self.contribs = contribs
        self.d_in = contribs[0].editor.d_out  # the width written here
        self.calls = 0
        self.single = contribs[0] if len(contribs) == 1 and contribs[0].reads is None else None

    def __repr__(self) -> str:
        return f"steering<{self.hook_name}: {', '.join(c.label for c in self.contribs)}>"

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor | None:
        x_in = x.detach()
        with sae_precision(x), torch.no_grad():
            out = self._edit(x_in)
        if out is None or not x.requires_grad:
            return out
        return _GradientToInput.apply(x, out)

    def _edit(self, x: Tensor) -> Tensor | None:
        self.calls += 1
        shape = x.shape
        if len(shape) == 3:
            B, S, D = shape
        elif len(shape) < 3:
            raise SteeringError(f"hook {self.hook_name} gave an activation of shape {tuple(shape)}; expected [batch, pos, ...]")
        else:
            B, S, D = shape[0], shape[1], math.prod(shape[2:])
        if D != self.d_in:
            raise SteeringError(
                f"hook {self.hook_name} carries width {D} but the edit there expects {self.d_in}; "
                f"the SAE was trained on a different hook point or model"
            )
        x_ND = x.view(B * S, D) if x.is_contiguous() else x.reshape(B * S, D)
        tracker = self.tracker
        if self.single is not None:  # one edit group, read here (the usual case): no loop
            sel = FULL if tracker is None else tracker.select(self.single.positions)
            if sel is FULL:
                out_ND = self.single.editor.apply(x_ND)
                return None if out_ND is x_ND else out_ND.view(shape)
        out_ND: Tensor | None = None
        for c in self.contribs:
            sel = FULL if tracker is None else tracker.select(c.positions)
            if sel is None:
                continue
            if sel is FULL and c.reads is None and out_ND is None:
                out_ND = c.editor.apply(x_ND)  # one fused product; x_ND itself when nothing changes
                continue
            read_NR = x_ND if c.reads is None else c.reads.rows(B, S).to(x.device)  # where the latents are read
            if sel is FULL:
                d_ND = c.editor.delta_or_none(read_NR)
                if d_ND is not None:
                    out_ND = (x_ND if out_ND is None else out_ND) + d_ND.to(x.dtype)
                continue
            if isinstance(sel, tuple):
                lo, hi = sel
                d_ND = c.editor.delta_or_none(read_NR.view(B, S, -1)[:, lo:hi].reshape(B * (hi - lo), -1))
            else:
                d_ND = c.editor.delta_or_none(read_NR.index_select(0, sel))
            if d_ND is None:  # nothing changes at these positions
                continue
            if out_ND is None or out_ND is x_ND:  # never write into the activation the model handed us
                out_ND = x_ND.clone()
            if isinstance(sel, tuple):
                out_ND.view(B, S, D)[:, lo:hi] += d_ND.to(x.dtype).view(B, hi - lo, D)
            else:
                out_ND.index_add_(0, sel, d_ND.to(x.dtype))
        return None if out_ND is None or out_ND is x_ND else out_ND.view(shape)


@dataclass
class SteeringPlan:
    """Hooks to attach: (hook name, hook function) plus the blocks whose positions are tracked."""

    edits: list[ResolvedEdit]
    hook_fns: dict[str, _HookFn]
    trackers: dict[int, SequenceTracker] = field(default_factory=dict)
    captures: dict[str, InputCapture] = field(default_factory=dict)  # transcoder inputs, by hook

    @property
    def fwd_hooks(self) -> list[tuple[str, _HookFn | InputCapture]]:
        # captures after the edits at their hook: a transcoder reads what flows on from there
        return list(self.hook_fns.items()) + list(self.captures.items())


def build_plan(model: Model, saes: SAEs, edits: Sequence[Edit | str | Preset], *, typical_max: TypicalMaxArg = None,
               limits: SteerLimits | None = None, allow_model_mismatch: bool = False) -> SteeringPlan:
    resolved = resolve_edits(model, saes, edits, typical_max=typical_max, limits=limits,
                             allow_model_mismatch=allow_model_mismatch)
    sae_map = sae_mapping(saes)
    device = model_device(model)
    # group latent edits by (hook, SAE, positions); vector edits stand alone
    groups: dict[tuple[str, str, Positions], list[ResolvedEdit]] = {}
    per_hook: dict[str, list[_Contribution]] = {}
    captures: dict[str, InputCapture] = {}
    for r in resolved:
        if r.latent is None:
            e = r.edit
            assert isinstance(e, VectorEdit)
            vec = e.vector.detach().to(device) * r.value
            per_hook.setdefault(r.hook_name, []).append(_Contribution(r.positions, ConstantEditor(vec), e.describe()))
        else:
            assert r.sae_name is not None
            groups.setdefault((r.hook_name, r.sae_name, r.positions), []).append(r)
    for (hook, name, positions), rs in groups.items():
        sae = sae_map[name]
        if sae.W_dec.device != device:
            raise SteeringError(
                f"SAE {name!r} is on {sae.W_dec.device} but the model runs on {device}; move it with "
                f"sae.to({str(device)!r})"
            )
        coefs = [op_coefficients(r.op, r.value) for r in rs]
        triggers = [r.trigger for r in rs] if any(r.trigger for r in rs) else None
        editor = LatentEditor(sae, [r.latent for r in rs], [c[0] for c in coefs], [c[1] for c in coefs],  # type: ignore[misc]
                              triggers=triggers)
        label = ",".join(r.describe() for r in rs)
        reads = rs[0].reads_hook
        capture = captures.setdefault(reads, InputCapture(reads)) if reads is not None else None
        per_hook.setdefault(hook, []).append(_Contribution(positions, editor, label, capture))
    trackers: dict[int, SequenceTracker] = {}
    hook_fns: dict[str, _HookFn] = {}
    for hook, contribs in per_hook.items():
        widths = {c.editor.d_out for c in contribs}
        if len(widths) > 1:
            raise SteeringError(f"edits at hook {hook} expect different widths {sorted(widths)}; check the SAEs' hooks")
        block = tracked_block(model, hook)  # tracked even for "all": pad tokens are never edited
        tracker = None if block is None else trackers.setdefault(block, SequenceTracker())
        hook_fns[hook] = _HookFn(hook, tracker, contribs)
    return SteeringPlan(resolved, hook_fns, trackers, captures)


# ---------------------------------------------------------------------------------- session
class SteeringSession:
    """Handle yielded by `steer`: the resolved edits, and generation with exact prompt positions."""

    def __init__(self, model: Model, plan: SteeringPlan, saes: SAEs = None) -> None:
        self.model = model
        self.plan = plan
        self.saes = saes  # their recorded prepend_bos is the prompts' default, as for `compare` and `sweep`
        self.active = True

    @property
    def edits(self) -> list[ResolvedEdit]:
        return self.plan.edits

    def describe(self) -> str:
        return "; ".join(r.describe() for r in self.plan.edits)

    @contextmanager
    def prompt_length(self, n_positions: int | None) -> Iterator[None]:
        """Within the block, sequences start with a prompt of `n_positions` (padded) positions."""
        old = {b: t.explicit_prompt_len for b, t in self.plan.trackers.items()}
        try:
            for t in self.plan.trackers.values():
                t.explicit_prompt_len = n_positions
            yield
        finally:
            for b, t in self.plan.trackers.items():
                t.explicit_prompt_len = old[b]

    def generate(self, prompts: str | Sequence[str], config: GenerationConfig | None = None,
                 **overrides: Any) -> Generation:
        """Steered generation (see `steering.generation.generate`); prompts start with BOS as the SAEs'
        inputs did (their recorded `prepend_bos`, a 'doc'-policy SAE's BOS, else the model's default)
        unless the config says. To compare with an unsteered pass, give both the config
        `steering.generation.with_sae_bos(config, saes)` so they read the same tokens (`compare` does)."""
        if not self.active:
            raise SteeringError("this steering session has ended; call it inside the `with steer(...)` block")
        config = with_sae_bos(dataclasses.replace(config or GenerationConfig(), **overrides), self.saes)
        return generate(self.model, prompts, config, session=self)


@contextmanager
def steer(
    model: Model,
    saes: SAEs,
    edits: Sequence[Edit | str | Preset] | Edit | str | Preset,
    *,
    typical_max: TypicalMaxArg = None,
    limits: SteerLimits | None = None,
    allow_model_mismatch: bool = False,
) -> Iterator[SteeringSession]:
    """Hook `edits` into `model` for the duration of the block.

    model: a TransformerLens HookedTransformer or TransformerBridge (SAELens's HookedSAETransformer /
    SAETransformerBridge too: at a hook where it has an SAE spliced with use_error_term=True the edit
    lands on the splice's output, `HOOK.hook_sae_output`, see `steering.saelens_splices`).
    saes: an SAE, a dict name -> SAE, a list of SAEs (named "0", "1", ...) or None (vector edits only);
    an SAE may be given as the `LoadedSAE` `saes.formats.resolve_sae` returns (its recorded model is then
    checked) or as a `sae_lens.SAE` (converted: `saes.interop.from_sae_lens`); each SAE's hook is its
    `cfg.metadata["hook_name"]`. Edits at different hooks apply in the model's order (a later SAE reads
    the activation earlier edits steered); at one hook every SAE reads the activation as the model
    produced it and their changes add up, whatever the edits' order (as the batched engine does).
    edits: FeatureEdit / VectorEdit objects or edit strings
    ("123:clamp=8", "res/5:add=2x@generated"). typical_max: feature -> typical max activation
    (dict or callable; or a dict SAE name -> such), needed for "x" units. limits: `SteerLimits`.
    An SAE whose provenance records another model than the one `saesteer.models.load_model`
    loaded is refused (saes.identity.ModelMismatchError) unless `allow_model_mismatch`; so is a
    TransformerBridge that attends with flash or flex attention (SteeringError: pads are read from
    eager or SDPA attention masks, `steering.positions.check_attention`).
    """
    if isinstance(edits, (str, FeatureEdit, VectorEdit, Preset)):
        edits = [edits]
    saes = converted_saes(saes)
    check_models(model, saes, allow_model_mismatch)
    check_attention(model)
    plan = build_plan(model, saes, list(edits), typical_max=typical_max, limits=limits,
                      allow_model_mismatch=allow_model_mismatch)
    session = SteeringSession(model, plan, saes)
    handles = []
    _OPEN.setdefault(model, []).append(session)
    try:
        # a transcoder's input may be read in a block where nothing is edited: watched there too (a
        # capture that stops firing would hand the edit the input of an earlier forward)
        watched = set(plan.trackers) | {b for h in plan.captures if (b := tracked_block(model, h)) is not None}
        for block_idx in sorted(watched):
            block = model.blocks[block_idx]
            watch = HookWatch([f for h, f in plan.fwd_hooks if h.startswith(f"blocks.{block_idx}.")])
            handles.append(block.register_forward_pre_hook(_pre_hook(plan.trackers.get(block_idx), block_idx, watch),
                                                           with_kwargs=True))
            handles.append(block.register_forward_hook(lambda module, args, out, watch=watch: watch.after()))
        # opt-in hook points (hook_mlp_in, ...) are on for the block only: the model is as it was after
        with opt_in_hooks(model, [h for h, _ in plan.fwd_hooks], "steering"), model.hooks(fwd_hooks=plan.fwd_hooks):
            yield session
    finally:
        session.active = False
        _OPEN[model].remove(session)
        for h in handles:
            h.remove()


# the sessions open on each model: a baseline generated inside one would be steered by it
_OPEN: "weakref.WeakKeyDictionary[Any, list[SteeringSession]]" = weakref.WeakKeyDictionary()


def check_not_steered(model: Model, who: str) -> None:
    """Refuse `who`, which generates or reads the model unsteered as its baseline, inside a `steer`
    block on `model`: that block's hooks would steer the baseline too, without a sound (a notebook
    cell calling `compare` under a `with steer(...)` kept from an earlier one). Nested `steer`
    blocks stack their edits, as intended; `s.generate` and `model.generate` inside them are steered."""
    open_ = [s.describe() for s in _OPEN.get(model, ())]
    if open_:
        raise SteeringError(
            f"{who} needs the model unsteered (its baseline), but it was called inside a `steer` block on this model "
            f"({'; '.join(open_)}), whose edits would steer that baseline too; call it after the block")


def _pre_hook(tracker: SequenceTracker | None, layer_idx: int, watch: HookWatch):
    def pre(module: Any, args: tuple, kwargs: dict) -> None:
        watch.before()
        if tracker is not None:
            tracker.observe(*block_call_info(layer_idx, args, kwargs))

    return pre


def hooks_attached(model: Model) -> list[str]:
    """Names of hook points / blocks that still carry hooks (empty when everything is clean)."""
    dirty = [n for n, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks or hp.fwd_hooks or hp.bwd_hooks]
    for i, b in enumerate(getattr(model, "blocks", [])):
        if b._forward_pre_hooks:
            dirty.append(f"blocks.{i} (pre-hook)")
    return dirty
