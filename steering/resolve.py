"""Resolving edits before any hook is attached: each edit checked against the model and SAEs
(unknown SAE or hook, latent out of range, width mismatch, a latent edited twice, non-finite or
absurd strengths, positions the hook cannot see), presets expanded, strengths turned into raw
activations, triggers into raw thresholds. `steering.session` attaches the hooks that apply them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from saes.base import SAE
from saes.hookpoints import check_editable_hook
from saes.identity import check_sae_model
from steering.inputs import Model, SAEs, TypicalMaxArg, named_saes, sae_mapping
from steering.presets import Preset
from steering.saelens_splices import steered_hook
from steering.transcoder import transcoder_target_hook
from steering.spec import (
    Edit, FeatureEdit, Positions, SteerLimits, SteeringError, TypicalMax, VectorEdit, chat_position,
    lookup_typical_max, parse_edit, raw_value,
)

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


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


def tracked_block(model: Model, hook_name: str) -> int | None:
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
    targets: dict[str, str] = {}  # transcoder -> its checked target hook (the check runs the model once)
    for e in edits:
        if isinstance(e, str):
            e = parse_edit(e)
        if isinstance(e, VectorEdit):
            out.append(_resolve_vector_edit(model, e, limits))
            continue
        if not isinstance(e, FeatureEdit):
            raise SteeringError(f"an edit must be a FeatureEdit, VectorEdit or text like '123:clamp=8'; got {e!r}")
        out.append(_resolve_feature_edit(model, sae_map, e, seen, targets, typical_max, limits))
    for r in out:
        _check_positions(model, r, chat_positions)
    return out


def _resolve_vector_edit(model: Model, e: VectorEdit, limits: SteerLimits) -> ResolvedEdit:
    """A steering vector: its hook exists, its entries are finite and as many as the hook's width,
    its strength is within the limit."""
    hook = steered_hook(model, e.hook_name, e.describe())
    check_editable_hook(model, hook, e.describe())
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
    return ResolvedEdit(e, None, hook, None, "add", e.strength, e.positions)


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


def check_latent_index(latent: int, sae: SAE, sae_name: str, what: str = "latent") -> None:
    """Refuse a latent `sae` does not have, naming it and the valid range: `what` words the latent
    (e.g. '123:add=4?900>1: trigger latent')."""
    if not 0 <= latent < sae.d_sae:
        raise SteeringError(f"{what} {latent} is out of range for SAE {sae_name!r} (d_sae {sae.d_sae}); valid ids are "
                            f"0..{sae.d_sae - 1}")


def check_edit_latents(saes: SAEs, edits: Sequence[Edit | str]) -> None:
    """The latents of the feature edits (and their triggers') checked against their SAEs' widths,
    which the SAE's files give: a command refuses a latent out of range before it loads a model."""
    sae_map = sae_mapping(saes)
    for e in edits:
        e = parse_edit(e) if isinstance(e, str) else e
        if isinstance(e, FeatureEdit):
            name = _sae_name_of(e, sae_map)
            _check_edit_latents(e, sae_map[name], name)


def _check_edit_latents(e: FeatureEdit, sae: SAE, sae_name: str) -> None:
    check_latent_index(e.latent, sae, sae_name, f"{e.describe()}: latent")
    if e.when is not None:
        check_latent_index(e.when.latent, sae, sae_name, f"{e.describe()}: trigger latent")


def _resolve_feature_edit(model: Model, sae_map: Mapping[str, SAE], e: FeatureEdit, seen: dict[tuple[str, int], str],
                          targets: dict[str, str],
                          typical_max: TypicalMaxArg, limits: SteerLimits) -> ResolvedEdit:
    """A feature edit: a latent of its SAE, the SAE fits the model's hook, no latent edited twice
    (`seen` records it), its strength converted to a raw activation."""
    name = _sae_name_of(e, sae_map)
    sae = sae_map[name]
    _check_edit_latents(e, sae, name)
    hook = sae_hook_name(sae, name)
    width = expected_width(model, hook)
    hook = steered_hook(model, hook, f"SAE {name!r}")
    check_editable_hook(model, hook, f"SAE {name!r}")
    if width is not None and width != sae.d_in:
        raise SteeringError(
            f"SAE {name!r} reads d_in={sae.d_in} but {hook} of this model has width {width}; "
            f"the SAE belongs to another model or hook point"
        )
    reads = None
    if sae.is_transcoder:  # the edit lands on the target hook; the latents are read at `hook`
        if name not in targets:
            targets[name] = transcoder_target_hook(model, sae, name, hook)
        reads, hook = hook, targets[name]
    key = (name, e.latent)
    if key in seen:
        raise SteeringError(
            f"latent {e.latent} of SAE {name!r} is edited twice ({seen[key]} and {e.describe()}; a preset's edits "
            f"count too); one edit per latent: drop one of them"
        )
    seen[key] = e.describe()
    provider = typical_max_for(typical_max, name)
    tmax = _typical_max_of(e, provider, name)
    value = raw_value(e, tmax, limits, name)
    trigger = None if e.when is None else (e.when.latent, trigger_threshold(e, provider, name))
    return ResolvedEdit(e, name, hook, e.latent, e.op, value, e.positions, tmax, trigger, reads)


def check_edit_typical_maxima(saes: SAEs, edits: Sequence[Edit | str], typical_max: TypicalMaxArg) -> None:
    """The 'x' strengths and thresholds of the feature edits checked against the typical maxima
    (a feature store's), which need no model: a command refuses a latent the store has none for
    before it loads a model."""
    sae_map = sae_mapping(saes)
    for e in edits:
        e = parse_edit(e) if isinstance(e, str) else e
        if isinstance(e, FeatureEdit):
            name = _sae_name_of(e, sae_map)
            provider = typical_max_for(typical_max, name)
            if provider is None:  # no maxima at all: resolve_edits says what to pass
                continue
            _typical_max_of(e, provider, name)
            if e.when is not None:
                trigger_threshold(e, provider, name)


def _typical_max_of(e: FeatureEdit, provider: TypicalMax | None, sae_name: str) -> float | None:
    """`e`'s latent's typical max from `provider`; refused when an 'x' value needs one the provider lacks."""
    tmax = lookup_typical_max(provider, e.latent)
    if tmax is None and provider is not None and e.unit == "max_act" and e.op in ("add", "clamp"):
        raise SteeringError(_no_typical_max(e.describe(), e.latent, sae_name, e.value, "value"))
    return tmax


def _check_positions(model: Model, r: ResolvedEdit, chat_positions: bool) -> None:
    """Chat positions only where the caller resolves them; token positions only at a hook inside a block."""
    if chat_position(r.positions) is not None and not chat_positions:
        raise SteeringError(
            f"{r.describe()}: positions {r.positions!r} name a chat role or turn, which only a chat prompt has; "
            f"use the chat API (saesteer api, steering.engine) or token indices"
        )
    if r.positions != "all" and tracked_block(model, r.hook_name) is None:
        raise SteeringError(
            f"{r.describe()}: positions {r.positions!r} need a hook inside a block (blocks.L.*) or ln_final; "
            f"{r.hook_name!r} sees the whole sequence at every generation step, so use positions='all'"
        )


def trigger_threshold(e: FeatureEdit, provider: TypicalMax | None, sae_name: str) -> float:
    """The raw threshold of `e`'s trigger (its latent checked by `_check_edit_latents`)."""
    t = e.when
    assert t is not None
    if t.unit == "raw":
        return t.above
    tmax = lookup_typical_max(provider, t.latent)
    if tmax is None and provider is not None:
        raise SteeringError(_no_typical_max(e.describe(), t.latent, sae_name, t.above, "threshold"))
    if tmax is None:
        raise SteeringError(
            f"{e.describe()}: trigger latent {t.latent} has no known typical max activation, so "
            f"'{t.above:g}x' cannot be resolved; pass typical_max= or give a raw threshold"
        )
    return t.above * tmax


def _no_typical_max(edit: str, latent: int, sae_name: str, multiple: float | None, what: str) -> str:
    """A typical-max provider (a feature store) was given but knows nothing of `latent`: say why, and
    what to give instead, in words every face can show (no Python argument, no flag)."""
    return (f"{edit}: no typical max activation is known for latent {latent} of SAE {sae_name!r} (a feature "
            f"store has none for a latent that never fired on the tokens it was built from), so '{multiple:g}x' "
            f"cannot be resolved; give a raw {what} (without 'x') or choose a latent that fires")
