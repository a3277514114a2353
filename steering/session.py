"""`steer(model, saes, edits)`: a context manager that hooks the edits into a HookedTransformer.

Shape key: B batch, S positions, D width at the hook (heads flattened), N selected rows.

    from steering import steer, FeatureEdit
    with steer(model, sae, ["123:clamp=8", FeatureEdit(7, "add", 4.0, positions="generated")]) as s:
        out = model.generate("the ship", max_new_tokens=20)      # TransformerLens, KV cache on
        res = s.generate(["the ship", "a tree"], GenerationConfig(max_new_tokens=20, seed=1))

A transcoder's latent edits read its latents at its input hook (`metadata.hook_name`), captured in
the same forward pass, and add (edited - original latent) x decoder row to its target hook's output
(`metadata.hook_name_out`); the input hook's activation itself is left as it is.

Everything is checked before a hook is attached (unknown SAE or hook, feature out of range,
non-finite or absurd strengths); hooks are added with TransformerLens's `model.hooks(...)` plus a
forward pre-hook per block involved (to read the KV-cache length and attention mask), and all of
them are removed when the block exits, whichever way it exits.

One module over 450 lines on purpose: resolving edits (checks, presets, triggers) and the hooks
that apply them are the two halves of `steer`, imported together by the API, the engine, sweeps
and methods; if it grows, the resolving half is the one to move out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saes.base import SAE
from saes.hookpoints import check_hook, model_device
from saes.identity import check_sae_model
from steering.config import GenerationConfig
from steering.generation import Generation, generate
from steering.inputs import Model, SAEs, TypicalMaxArg, named_saes, sae_mapping
from steering.interventions import LatentEditor, op_coefficients
from steering.positions import FULL, SequenceTracker, block_call_info
from steering.presets import Preset
from steering.transcoder import InputCapture, transcoder_target_hook
from steering.spec import (
    Edit, FeatureEdit, Positions, SteerLimits, SteeringError, TypicalMax, VectorEdit, chat_position,
    lookup_typical_max, parse_edit, raw_value,
)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


# ------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class ResolvedEdit:
    """An edit after validation: raw value, the SAE's name and hook."""

    edit: Edit
    sae_name: str | None
    hook_name: str  # where the edit lands (a transcoder: its target hook)
    latent: int | None  # None for vector edits
    op: str
    value: float  # raw units (add/clamp), factor (scale), 0 (ablate), strength (vector)
    positions: Positions
    typical_max: float | None = None
    trigger: tuple[int, float] | None = None  # (trigger latent, raw threshold) of a conditional edit
    reads_hook: str | None = None  # a transcoder's input hook, where its latents are read

    def describe(self) -> str:
        return self.edit.describe()


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

    def delta(self, x_ND: Tensor) -> Tensor:
        return self.constant(x_ND.dtype, x_ND.device).expand(x_ND.shape[0], -1)

    def apply(self, x_ND: Tensor) -> Tensor:
        return x_ND + self.constant(x_ND.dtype, x_ND.device)


@dataclass
class _Contribution:
    positions: Positions
    editor: LatentEditor | ConstantEditor
    label: str
    reads: InputCapture | None = None  # a transcoder's input hook: latents are read there, not at this hook


class _HookFn:
    """The forward hook at one hook point: applies its contributions at their positions."""

    def __init__(self, hook_name: str, tracker: SequenceTracker | None, contribs: list[_Contribution]) -> None:
        self.hook_name = hook_name
        self.tracker = tracker
        self.contribs = contribs
        self.d_in = contribs[0].editor.d_out  # the width written here
        self.calls = 0

    def __repr__(self) -> str:
        return f"steering<{self.hook_name}: {', '.join(c.label for c in self.contribs)}>"

    def __call__(self, x: Tensor, hook: Any = None) -> Tensor | None:
        self.calls += 1
        shape = x.shape
        if x.ndim < 3:
            raise SteeringError(f"hook {self.hook_name} gave an activation of shape {tuple(shape)}; expected [batch, pos, ...]")
        B, S = shape[0], shape[1]
        D = math.prod(shape[2:])
        if D != self.d_in:
            raise SteeringError(
                f"hook {self.hook_name} carries width {D} but the edit there expects {self.d_in}; "
                f"the SAE was trained on a different hook point or model"
            )
        x_ND = x.reshape(B * S, D)
        tracker = self.tracker
        out_ND: Tensor | None = None
        for c in self.contribs:
            sel = FULL if tracker is None else tracker.select(c.positions)
            if sel is None:
                continue
            read_NR = x_ND if c.reads is None else c.reads.rows(B, S).to(x.device)  # where the latents are read
            if sel is FULL:
                if out_ND is None:
                    out_ND = c.editor.apply(x_ND) if c.reads is None else x_ND + c.editor.delta(read_NR).to(x.dtype)
                else:
                    out_ND = out_ND + c.editor.delta(read_NR)
                continue
            if out_ND is None or out_ND is x_ND:  # never write into the activation the model handed us
                out_ND = x_ND.clone()
            if isinstance(sel, tuple):
                lo, hi = sel
                rows_NR = read_NR.view(B, S, -1)[:, lo:hi].reshape(B * (hi - lo), -1)
                out_ND.view(B, S, D)[:, lo:hi] += c.editor.delta(rows_NR).view(B, hi - lo, D)
            else:
                out_ND.index_add_(0, sel, c.editor.delta(read_NR.index_select(0, sel)))
        return None if out_ND is None or out_ND is x_ND else out_ND.view(shape)


def check_models(model: Model, saes: SAEs, allow_mismatch: bool = False) -> None:
    """Refuse SAEs recorded for another model than `model` (when both sides record one: an SAE
    given as a `LoadedSAE` carries its record, a bare SAE none)."""
    for name, sae in named_saes(saes).items():
        check_sae_model(model, sae, sae_name=name, allow_mismatch=allow_mismatch)


def sae_hook_name(sae: SAE, name: str = "sae") -> str:
    """The hook an SAE reads: `cfg.metadata["hook_name"]` (the loaders fill it in from the
    provenance or --hook where cfg.json lacks it)."""
    hook = (sae.cfg.metadata or {}).get("hook_name")
    if not hook:
        raise SteeringError(
            f"SAE {name!r} does not record its hook point; set sae.cfg.metadata['hook_name'] "
            f"(e.g. 'blocks.1.hook_resid_post') to the hook it was trained on"
        )
    head = (sae.cfg.metadata or {}).get("hook_head_index")
    if head is not None:  # a SAELens per-head SAE: it reads [..., d_head] of one head
        raise SteeringError(
            f"SAE {name!r} reads only head {head} of {hook} (hook_head_index={head}); saesteer steers SAEs that read "
            f"all heads of the hook, flattened"
        )
    return str(hook)


def expected_width(model: Model, hook_name: str) -> int | None:
    """Width of the activation at a standard TransformerLens hook (heads flattened), if known."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return None
    last = hook_name.rsplit(".", 1)[-1]
    if last in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                "hook_embed", "hook_pos_embed") or hook_name.startswith("ln_final."):
        return int(cfg.d_model)
    if last in ("hook_z", "hook_q", "hook_v", "hook_k", "hook_result") and ".attn." in hook_name:
        n_heads = cfg.n_key_value_heads if (last in ("hook_k", "hook_v") and getattr(cfg, "n_key_value_heads", None)) else cfg.n_heads
        return int(n_heads * cfg.d_head) if last != "hook_result" else None
    if last in ("hook_pre", "hook_post") and ".mlp." in hook_name and getattr(cfg, "d_mlp", None):
        return int(cfg.d_mlp)
    return None


def _tracked_block(model: Model, hook_name: str) -> int | None:
    m = _BLOCK_RE.match(hook_name)
    if m:
        return int(m.group(1))
    if hook_name.startswith("ln_final.") and hasattr(model, "blocks"):
        return len(model.blocks) - 1
    return None


def typical_max_for(provider: TypicalMaxArg, sae_name: str) -> TypicalMax | None:
    """Pick the provider of one SAE: a per-SAE mapping keyed by SAE name, or a shared one."""
    if provider is None:
        return None
    if isinstance(provider, Mapping) and provider and all(isinstance(k, str) for k in provider):
        return provider.get(sae_name)
    return provider


def expand_presets(model: Model, sae_map: Mapping[str, SAE], edits: Sequence[Edit | str | Preset], *,
                   allow_model_mismatch: bool = False,
                   fingerprints: Mapping[str, str] | None = None,
                   model_override: str = "allow_model_mismatch=True") -> list[Edit | str]:
    """Replace every `Preset` in `edits` by its feature edits, after checking it against the SAE
    (and model) it is applied to (`Preset.check`)."""
    out: list[Edit | str] = []
    for e in edits:
        if not isinstance(e, Preset):
            out.append(e)
            continue
        if len(sae_map) != 1:
            raise SteeringError(f"preset {e.name!r} belongs to one SAE; give only that SAE (got {', '.join(sae_map) or 'none'})")
        name, sae = next(iter(sae_map.items()))
        e.check(model, sae, sae_name=name, allow_model_mismatch=allow_model_mismatch,
                fingerprint=(fingerprints or {}).get(name), model_override=model_override)
        out.extend(e.feature_edits(None))
    return out


def resolve_edits(
    model: Model,
    saes: SAEs,
    edits: Sequence[Edit | str | Preset] | Edit | str | Preset,
    *,
    typical_max: TypicalMaxArg = None,
    limits: SteerLimits | None = None,
    allow_model_mismatch: bool = False,
    chat_positions: bool = False,
    fingerprints: Mapping[str, str] | None = None,
    model_override: str = "allow_model_mismatch=True",
) -> list[ResolvedEdit]:
    """Validate edits against the model and SAEs; raise `SteeringError` naming the fix.

    `edits` may hold `steering.presets.Preset`s (checked against the SAE and model, then
    expanded). `chat_positions`: accept role:/turn: positions (the batched engine resolves them
    against a chat prompt; `steer` cannot)."""
    limits = limits or SteerLimits()
    sae_map = sae_mapping(saes)
    if isinstance(edits, (str, FeatureEdit, VectorEdit, Preset)):
        edits = [edits]
    if not edits:
        raise SteeringError("no edits given; pass e.g. ['123:clamp=8'] or FeatureEdit(123, 'clamp', 8.0)")
    edits = expand_presets(model, sae_map, edits, allow_model_mismatch=allow_model_mismatch, fingerprints=fingerprints,
                           model_override=model_override)
    out: list[ResolvedEdit] = []
    seen: dict[tuple[str, int], str] = {}  # (SAE, feature) -> the edit that took it
    for e in edits:
        if isinstance(e, str):
            e = parse_edit(e)
        if isinstance(e, VectorEdit):
            out.append(_resolve_vector_edit(model, e, limits))
            continue
        if not isinstance(e, FeatureEdit):
            raise SteeringError(f"an edit must be a FeatureEdit, VectorEdit or text like '123:clamp=8'; got {e!r}")
        out.append(_resolve_feature_edit(model, sae_map, e, seen, typical_max, limits))
    for r in out:
        _check_positions(model, r, chat_positions)
    return out


def _resolve_vector_edit(model: Model, e: VectorEdit, limits: SteerLimits) -> ResolvedEdit:
    """A steering vector: its hook exists, its entries are finite and as many as the hook's width,
    its strength is within the limit."""
    check_hook(model, e.hook_name, e.describe())
    if not torch.isfinite(e.vector).all():
        raise SteeringError(f"vector {e.label!r} has non-finite entries")
    width = expected_width(model, e.hook_name)
    if width is not None and width != e.vector.numel():
        raise SteeringError(
            f"vector {e.label!r} has {e.vector.numel()} entries but {e.hook_name} has width {width}"
        )
    if abs(e.strength) > limits.max_vector_norm_multiple:
        raise SteeringError(
            f"{e.describe()}: strength {e.strength:g} is above the limit of "
            f"{limits.max_vector_norm_multiple:g}; use a smaller one or raise SteerLimits.max_vector_norm_multiple"
        )
    return ResolvedEdit(e, None, e.hook_name, None, "add", e.strength, e.positions)


def _sae_name_of(e: FeatureEdit, sae_map: Mapping[str, SAE]) -> str:
    """The SAE a feature edit names, or the only one given."""
    if not sae_map:
        raise SteeringError(f"{e.describe()}: no SAE given; pass saes=the SAE (or a dict name -> SAE)")
    if e.sae is None:
        if len(sae_map) != 1:
            raise SteeringError(
                f"{e.describe()}: several SAEs are given ({', '.join(sae_map)}); name one, e.g. "
                f"{next(iter(sae_map))}/{e.latent}:{e.op}"
            )
        return next(iter(sae_map))
    if e.sae not in sae_map:
        raise SteeringError(f"{e.describe()}: unknown SAE {e.sae!r}; known: {', '.join(sae_map)}")
    return e.sae


def _resolve_feature_edit(model: Model, sae_map: Mapping[str, SAE], e: FeatureEdit, seen: dict[tuple[str, int], str],
                          typical_max: TypicalMaxArg, limits: SteerLimits) -> ResolvedEdit:
    """A feature edit: a latent of its SAE, the SAE fits the model's hook, no latent edited twice
    (`seen` records it), its strength converted to a raw activation."""
    name = _sae_name_of(e, sae_map)
    sae = sae_map[name]
    if not 0 <= e.latent < sae.d_sae:
        raise SteeringError(
            f"{e.describe()}: feature {e.latent} is out of range for SAE {name!r}; valid ids are 0..{sae.d_sae - 1}"
        )
    hook = sae_hook_name(sae, name)
    check_hook(model, hook, f"SAE {name!r}")
    width = expected_width(model, hook)
    if width is not None and width != sae.d_in:
        raise SteeringError(
            f"SAE {name!r} reads d_in={sae.d_in} but {hook} of this model has width {width}; "
            f"the SAE belongs to another model or hook point"
        )
    reads = None
    if sae.is_transcoder:  # the edit lands on the target hook; the latents are read at `hook`
        reads, hook = hook, transcoder_target_hook(model, sae, name, hook)
    key = (name, e.latent)
    if key in seen:
        raise SteeringError(
            f"feature {e.latent} of SAE {name!r} is edited twice ({seen[key]} and {e.describe()}); merge them into one edit"
        )
    seen[key] = e.describe()
    provider = typical_max_for(typical_max, name)
    tmax = lookup_typical_max(provider, e.latent)
    value = raw_value(e, tmax, limits, name)
    trigger = None if e.when is None else (e.when.latent, trigger_threshold(e, sae, provider, name))
    return ResolvedEdit(e, name, hook, e.latent, e.op, value, e.positions, tmax, trigger, reads)


def _check_positions(model: Model, r: ResolvedEdit, chat_positions: bool) -> None:
    """Chat positions only where the caller resolves them; token positions only at a hook inside a block."""
    if chat_position(r.positions) is not None and not chat_positions:
        raise SteeringError(
            f"{r.describe()}: positions {r.positions!r} name a chat role or turn, which only a chat prompt has; "
            f"use the chat API (saesteer api, steering.engine) or token indices"
        )
    if r.positions != "all" and _tracked_block(model, r.hook_name) is None:
        raise SteeringError(
            f"{r.describe()}: positions {r.positions!r} need a hook inside a block (blocks.L.*) or ln_final; "
            f"{r.hook_name!r} sees the whole sequence at every generation step, so use positions='all'"
        )


def trigger_threshold(e: FeatureEdit, sae: SAE, provider: TypicalMax | None, sae_name: str) -> float:
    """The raw threshold of `e`'s trigger (checked: a latent of the SAE, a finite threshold)."""
    t = e.when
    assert t is not None
    if not 0 <= t.latent < sae.d_sae:
        raise SteeringError(
            f"{e.describe()}: trigger feature {t.latent} is out of range for SAE {sae_name!r}; valid ids are 0..{sae.d_sae - 1}"
        )
    if t.unit == "raw":
        return t.above
    tmax = lookup_typical_max(provider, t.latent)
    if tmax is None:
        raise SteeringError(
            f"{e.describe()}: trigger feature {t.latent} has no known typical max activation, so "
            f"'{t.above:g}x' cannot be resolved; pass typical_max= or give a raw threshold"
        )
    return t.above * tmax


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
        block = _tracked_block(model, hook)  # tracked even for "all": pad tokens are never edited
        tracker = None if block is None else trackers.setdefault(block, SequenceTracker())
        hook_fns[hook] = _HookFn(hook, tracker, contribs)
    return SteeringPlan(resolved, hook_fns, trackers, captures)


# ---------------------------------------------------------------------------------- session
class SteeringSession:
    """Handle yielded by `steer`: the resolved edits, and generation with exact prompt positions."""

    def __init__(self, model: Model, plan: SteeringPlan) -> None:
        self.model = model
        self.plan = plan
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
        """Steered generation (see `steering.generation.generate`)."""
        if not self.active:
            raise SteeringError("this steering session has ended; call it inside the `with steer(...)` block")
        return generate(self.model, prompts, config, session=self, **overrides)


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

    model: a TransformerLens HookedTransformer or TransformerBridge. saes: an SAE, a dict name -> SAE, a list of SAEs
    (named "0", "1", ...) or None (vector edits only); an SAE may be given as the `LoadedSAE`
    `saes.formats.resolve_sae` returns (its recorded model is then checked); each SAE's hook is its
    `cfg.metadata["hook_name"]`. edits: FeatureEdit / VectorEdit objects or edit strings
    ("123:clamp=8", "res/5:add=2x@generated"). typical_max: feature -> typical max activation
    (dict or callable; or a dict SAE name -> such), needed for "x" units. limits: `SteerLimits`.
    An SAE whose provenance records another model than the one `saesteer.models.load_model`
    loaded is refused (saes.identity.ModelMismatchError) unless `allow_model_mismatch`.
    """
    if isinstance(edits, (str, FeatureEdit, VectorEdit, Preset)):
        edits = [edits]
    check_models(model, saes, allow_model_mismatch)
    plan = build_plan(model, saes, list(edits), typical_max=typical_max, limits=limits,
                      allow_model_mismatch=allow_model_mismatch)
    session = SteeringSession(model, plan)
    handles = []
    try:
        for block_idx, tracker in plan.trackers.items():
            handles.append(
                model.blocks[block_idx].register_forward_pre_hook(_pre_hook(tracker, block_idx), with_kwargs=True)
            )
        with model.hooks(fwd_hooks=plan.fwd_hooks):
            yield session
    finally:
        session.active = False
        for h in handles:
            h.remove()


def _pre_hook(tracker: SequenceTracker, layer_idx: int):
    def pre(module: Any, args: tuple, kwargs: dict) -> None:
        tracker.observe(*block_call_info(layer_idx, args, kwargs))

    return pre


def hooks_attached(model: Model) -> list[str]:
    """Names of hook points / blocks that still carry hooks (empty when everything is clean)."""
    dirty = [n for n, hp in model.hook_dict.items() if hp._forward_hooks or hp._backward_hooks or hp.fwd_hooks or hp.bwd_hooks]
    for i, b in enumerate(getattr(model, "blocks", [])):
        if b._forward_pre_hooks:
            dirty.append(f"blocks.{i} (pre-hook)")
    return dirty
