"""Whether an SAE from SAELens reads a model loaded with TransformerLens's weight processing.

    wants = processing_wanted(loaded_sae)     # True: processed, False: raw, None: either
    check_processing(loaded_sae, identity_of_model(model), sae_name="sae", model_as="the model given",
                     override="allow_model_mismatch=True", fix="load it with process_weights=True")

SAELens records how the model must be loaded for an SAE in `model_from_pretrained_kwargs` (the
registry's `config_overrides` or the SAE's cfg.json metadata): keyword arguments for
`HookedTransformer.from_pretrained_no_processing`, whose flags default to False. The registry's
`gpt2-small-res-jb` says `center_writing_weights: true`: it was trained on a residual stream with
centred writing weights, and a model loaded with raw weights gives it other activations at every
position. saesteer loads a model either raw or with all of `saes.identity.PROCESSING`
(`--process-weights`); which flags matter depends on the hook (`FLAG_CHANGES`), so an SAE's
kwargs ask for "raw", "processed", either, or something neither gives (then refused).

An SAE whose files record no kwargs is not checked: nothing says how its model was loaded.

`center_writing_weights` centres only what feeds a LayerNorm that subtracts the mean: TransformerLens
skips it for RMSNorm models (Llama, Gemma, Qwen, Mistral), post-norm and shortformer models, where
it changes no activation. SAELens's trainer records `center_writing_weights: False` for every SAE it
trains, so the flag counts only where the model's config (`model_cfg`) says it has an effect. The
same holds for every flag TransformerLens's `from_pretrained` leaves out for a model (`skipped_flags`:
fold_ln on post-norm and shortformer models, center_unembed with a logit softcap): it is applied
neither to the SAE's model nor to ours, whatever the kwargs say.

Without the model (`features build`, `train --init-from`), a cache's manifest records what these
rules read (`model_processing`: `processing_record`), and `config_of_record` gives it back as the
`model_cfg`. Where the config is unknown (a cache from before that record) a refusal never rests on
center_writing_weights=False alone (an SAE asking for True was trained where centring happens, and
is still checked), and the other flags count as they do on GPT-2.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from saes.identity import PROCESSING, ModelIdentity, ModelMismatchError

__all__ = ["processing_seen", "FLAG_CHANGES", "flags_changing", "centres_writing_weights", "skipped_flags", "transformerlens_processing",
           "processing_record", "config_of_record", "applied_of_record", "recorded_kwargs", "processing_wanted", "check_processing"]

# The hook points (TransformerLens names) whose values each flag changes, as measured on a GPT-2
# HookedTransformer loaded with that one flag (tests/test_weight_processing.py measures it again):
# fold_ln leaves hook_normalized (taken before the norm's weights) but changes what reads the norm's
# output; centring writing weights changes everything written to or read from the residual stream
# before a norm; folding value biases moves b_V out of the values into b_O.
FLAG_CHANGES: dict[str, re.Pattern] = {
    "fold_ln": re.compile(r"(^|\.)(mlp|attn|unembed)\.hook_in$"),
    "center_writing_weights": re.compile(
        r"(^hook_embed$|^hook_pos_embed$|\.hook_resid_(pre|mid|post)$|\.hook_(attn|mlp)_(in|out)$"
        r"|\.hook_[qkv]_input$|\.attn\.hook_result$)"),
    "center_unembed": re.compile(r"^unembed\.hook_out$"),
    "fold_value_biases": re.compile(r"\.attn\.hook_(v|z|result)$"),
}
# hook points no flag changes (the others, unknown here, count as changed by every flag but center_unembed)
_UNCHANGED = re.compile(r"(\.hook_scale$|\.hook_normalized$|\.attn\.hook_(q|k|rot_q|rot_k|attn_scores|pattern)$"
                        r"|\.mlp\.hook_(pre|post|pre_linear)$|^hook_tokens$)")


_CENTRED = "center_writing_weights"


def _architecture(model_cfg: Any) -> str | None:
    """The HF architecture class a config names (HookedTransformer: original_architecture; Bridge: architecture)."""
    return getattr(model_cfg, "original_architecture", None) or getattr(model_cfg, "architecture", None)


def centres_writing_weights(model_cfg: Any) -> bool | None:
    """Whether TransformerLens's center_writing_weights changes a model with this config (a
    HookedTransformerConfig or TransformerBridge config): only LayerNorm (LN/LNPre) models without
    a final RMSNorm, and neither post-norm nor shortformer (weight_processing.py's
    process_weights, HookedTransformer.from_pretrained). None when `model_cfg` is None or says
    nothing of its normalization."""
    norm = getattr(model_cfg, "normalization_type", None)
    if model_cfg is None or norm is None:
        return None
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    return (norm in ("LN", "LNPre") and not getattr(model_cfg, "final_rms", False)
            and getattr(model_cfg, "positional_embedding_type", None) != "shortformer"
            and _architecture(model_cfg) not in POST_NORM_ARCHITECTURES)


def skipped_flags(model_cfg: Any) -> set[str] | None:
    """The flags of `PROCESSING` that TransformerLens's `HookedTransformer.from_pretrained` does not
    apply to a model with this config, or that change nothing there: fold_ln on post-norm and
    shortformer models and on norms it cannot fold; center_writing_weights where it centres nothing
    (`centres_writing_weights`); center_unembed on shortformer models and under a logit softcap.
    None when `model_cfg` is None or says nothing of its normalization."""
    if model_cfg is None or getattr(model_cfg, "normalization_type", None) is None:
        return None
    from transformer_lens.utilities import softcap_enabled
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    shortformer = getattr(model_cfg, "positional_embedding_type", None) == "shortformer"
    skipped = set()
    if (shortformer or _architecture(model_cfg) in POST_NORM_ARCHITECTURES
            or model_cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre")):
        skipped.add("fold_ln")
    if not centres_writing_weights(model_cfg):
        skipped.add(_CENTRED)
    if shortformer or softcap_enabled(getattr(model_cfg, "output_logits_soft_cap", None)):
        skipped.add("center_unembed")
    return skipped


def transformerlens_processing(model_cfg: Any) -> dict[str, bool]:
    """The flags `PROCESSING` comes to on a model with this config, as TransformerLens's
    `from_pretrained` applies them (`skipped_flags` off): what `saesteer.models` passes when it
    processes a model's weights."""
    skipped = skipped_flags(model_cfg) or set()
    return {flag: value and flag not in skipped for flag, value in PROCESSING.items()}


# the config fields `skipped_flags` reads: what a cache records of its model (`processing_record`)
RECORDED_CONFIG = ("normalization_type", "final_rms", "positional_embedding_type", "original_architecture",
                   "output_logits_soft_cap")
APPLIED_ATTR = "_saesteer_processing_applied"  # set on a model by saesteer.models.load_model


def processing_record(model: Any) -> dict[str, Any] | None:
    """What a cache's manifest records of its model's weight processing (`model_processing`):
    {"config": the RECORDED_CONFIG fields of its config, "applied": {flag: bool}: what its loader
    applied (`APPLIED_ATTR`); for a model saesteer did not load, `transformerlens_processing` where
    its identity says processed, nothing where raw}. None for a model whose config names no norm.
    (Folding turns a config's LN into LNPre, RMS into RMSPre: the rules read them alike.)"""
    from saes.identity import identity_of_model

    cfg = getattr(model, "cfg", None)
    if cfg is None or getattr(cfg, "normalization_type", None) is None:
        return None
    applied = getattr(model, APPLIED_ATTR, None)
    if applied is None:
        ident = identity_of_model(model)
        processed = ident is not None and ident.processed
        applied = {flag: processed and on for flag, on in transformerlens_processing(cfg).items()}
    config = {name: _plain(getattr(cfg, name, None)) for name in RECORDED_CONFIG}
    config["original_architecture"] = _architecture(cfg)
    return {"config": config,
            "applied": {flag: bool(applied.get(flag, False)) for flag in PROCESSING}}


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def config_of_record(record: Mapping[str, Any] | None) -> Any:
    """The model config a `processing_record` holds, as an object `skipped_flags` / `flags_changing`
    read (None when there is no record: the config is unknown)."""
    from types import SimpleNamespace

    config = (record or {}).get("config") if isinstance(record, Mapping) else None
    if not isinstance(config, Mapping) or config.get("normalization_type") is None:
        return None
    return SimpleNamespace(**{name: config.get(name) for name in RECORDED_CONFIG})


def flags_changing(hook_name: str, model_cfg: Any = None) -> set[str]:
    """The processing flags that change the activations at `hook_name` (of a model with config
    `model_cfg`: without it, every flag counts as changing what it changes on GPT-2)."""
    hit = {flag for flag, pattern in FLAG_CHANGES.items() if pattern.search(hook_name)}
    if not hit and not _UNCHANGED.search(hook_name):
        hit = set(PROCESSING) - {"center_unembed"}
    return hit - (skipped_flags(model_cfg) or set())


def recorded_kwargs(loaded: Any) -> dict[str, Any] | None:
    """SAELens's `model_from_pretrained_kwargs` recorded for a loaded SAE (its provenance: the
    registry's overrides; else its cfg.json metadata), or None."""
    prov = getattr(loaded, "provenance", None) or {}
    kwargs = prov.get("model_from_pretrained_kwargs")
    if kwargs is None:
        kwargs = _metadata(loaded).get("model_from_pretrained_kwargs")
    return dict(kwargs) if isinstance(kwargs, Mapping) and kwargs else None


def _metadata(loaded: Any) -> Mapping[str, Any]:
    """cfg.metadata of an SAE given bare or as a LoadedSAE."""
    sae = getattr(loaded, "sae", loaded)
    return getattr(getattr(sae, "cfg", None), "metadata", None) or {}


def _needed(loaded: Any, model_cfg: Any = None) -> tuple[str, dict[str, bool]] | None:
    """(its hook(s), {flag: value the SAE needs}) over the flags that matter at its hook (and a
    transcoder's target hook) of a model with config `model_cfg`; None when nothing is recorded or
    nothing matters there."""
    kwargs = recorded_kwargs(loaded)
    md = _metadata(loaded)
    hooks = [str(h) for h in (md.get("hook_name"), md.get("hook_name_out")) if h]  # a transcoder's target too
    if kwargs is None or not hooks:
        return None
    flags = set().union(*(flags_changing(h, model_cfg) for h in hooks))
    needed = {flag: bool(kwargs.get(flag, False)) for flag in sorted(flags)}
    return (" -> ".join(hooks), needed) if needed else None


def processing_wanted(loaded: Any, model_cfg: Any = None) -> bool | None:
    """True when the SAE reads a model loaded with saesteer's processing (`--process-weights`), False
    when raw, None when either gives its activations (or nothing is recorded), and also None when
    neither does (`check_processing` refuses that). A preference for loading, counted as
    `check_processing` counts it: pass the model's config (`model_cfg`), without which every flag
    counts as it does on GPT-2 (`skipped_flags`)."""
    got = _needed(loaded, model_cfg)
    if got is None:
        return None
    values = set(got[1].values())
    return values.pop() if len(values) == 1 else None


def _describe(needed: Mapping[str, bool]) -> str:
    return ", ".join(f"{flag}={value}" for flag, value in needed.items())


def applied_of_record(record: Mapping[str, Any] | None) -> dict[str, bool] | None:
    """The flags a `processing_record` says its model's loader applied (None when there is no record)."""
    applied = (record or {}).get("applied") if isinstance(record, Mapping) else None
    return {flag: bool(applied.get(flag, False)) for flag in PROCESSING} if isinstance(applied, Mapping) else None


def check_processing(loaded: Any, model: ModelIdentity | None, *, sae_name: str, model_as: str, override: str,
                     fix: Callable[[bool], str], model_cfg: Any = None,
                     applied: Mapping[str, bool] | None = None) -> None:
    """Refuse (ModelMismatchError) a model whose weight processing gives the SAE other activations
    at its hook than the ones its SAELens `model_from_pretrained_kwargs` say it was trained on,
    naming both sides, `fix(wanted)` (how to get a model processed (True) or raw (False) where the
    caller is) and `override`. Nothing recorded on either side passes. `model_cfg`: the model's
    config where known (a loaded model's cfg, or `config_of_record` of a cache's `model_processing`):
    flags `skipped_flags` names do not count; unknown, center_writing_weights=False alone never refuses.
    `applied`: the flags the model's loader applied, where known (`APPLIED_ATTR` on a loaded model,
    `applied_of_record` of a cache's record): a processed model whose TransformerBridge adapter
    could not apply a flag the SAE needs (e.g. fold_ln on OPT or Phi-3) is refused too."""
    got = _needed(loaded, model_cfg)
    if got is None or model is None:
        return
    hook, needed = got
    if centres_writing_weights(model_cfg) is None and not needed.get(_CENTRED, True):
        # the model unknown: False (what SAELens's trainer writes for every SAE) may be moot there, so
        # the other flags decide; True is only ever asked for where it centres (GPT-2's res-jb)
        needed = {flag: value for flag, value in needed.items() if flag != _CENTRED}
        if not needed:
            return
    spec = getattr(loaded, "spec", None)
    who = f"SAE {sae_name!r}" + (f" ({spec})" if spec and spec != sae_name else "")
    asks = (f"{who} was trained on {hook} of a model loaded with {_describe(needed)} (SAELens's "
            f"model_from_pretrained_kwargs)")
    if len(set(needed.values())) > 1:
        raise ModelMismatchError(
            f"{asks}; saesteer loads a model either raw or with all of {', '.join(PROCESSING)} "
            f"(--process-weights), and neither gives those activations. Pass {override} to use it anyway")
    wanted = next(iter(needed.values()))
    if model.processed == wanted:
        have = {flag: bool(applied.get(flag, False)) for flag in needed} if applied is not None else needed
        if have != needed:
            why = (f"; load it with HookedTransformer.from_pretrained(..., {_describe(needed)}), or pass"
                   if model.source == "object" else  # a notebook's model: its processing set flag by flag
                   " (its TransformerBridge adapter does not apply the rest, as HookedTransformer does); the "
                   "activations differ. Pass")
            raise ModelMismatchError(f"{asks}, but {model_as} was loaded with {_describe(have)} there{why} "
                                     f"{override} to use it anyway")
        return
    have = ("with TransformerLens's weight processing (--process-weights: " + ", ".join(PROCESSING) + ")"
            if model.processed else "with its raw weights (no --process-weights)")
    how = fix(wanted)
    raise ModelMismatchError(f"{asks}, but {model_as} was loaded {have}; the activations there differ. "
                             f"{how[:1].upper()}{how[1:]}, or pass {override} to use it anyway")


def _centred(W: Any) -> bool:
    """`_rows_centred(W)`, kept on the tensor until it changes: every `steer`, `sweep` strength and
    `compare_methods` run asks, and reading a large vocabulary's rows takes a noticeable time."""
    key = (W._version, W.data_ptr(), W.dtype, tuple(W.shape))  # an in-place edit or new data changes it
    seen = getattr(W, _SEEN_ATTR, None)
    if seen is None or seen[0] != key:
        seen = (key, _rows_centred(W))
        try:
            setattr(W, _SEEN_ATTR, seen)
        except (AttributeError, RuntimeError):  # a tensor that takes no attributes: read each time
            pass
    return seen[1]


_SEEN_ATTR = "_saesteer_rows_centred"


def _rows_centred(W: Any) -> bool:
    """Every row of `W` sums to 0 over its last dimension, up to the rounding of its dtype: what
    centring leaves. A row's mean is measured against the spread the mean of its entries has when
    they are unrelated (its rms / sqrt(width)): rounding to bf16 leaves ~0.002 of that after centring,
    trained or random rows ~1 (a fixed fraction of the largest entry misread bf16/fp16 models).
    Read in slices of rows, so a large vocabulary is never copied whole to float32."""
    import torch

    width = W.shape[-1]
    rows = W.detach().reshape(-1, width)
    step = max(1, (1 << 22) // width)
    with torch.no_grad():
        for i in range(0, rows.shape[0], step):
            R = rows[i:i + step].float()
            spread = R.square().mean(-1).sqrt() / width ** 0.5
            if bool((R.mean(-1).abs() > _CENTRED_TOLERANCE * spread).any()):
                return False
    return True


# a centred row's mean, as a fraction of the spread of a mean of unrelated entries (`_centred`)
_CENTRED_TOLERANCE = 0.05


def processing_seen(model: Any) -> tuple[ModelIdentity, dict[str, bool]] | None:
    """For a HookedTransformer loaded outside saesteer (no identity attached: `from_pretrained`, built
    in a notebook), the weight processing its config and weights show, as (an identity "object",
    raw or processed; the flags applied): fold_ln turns a HookedTransformer's norms into LNPre /
    RMSPre; centring leaves the embedding's and the unembedding's rows summing to 0, which trained or
    random weights never do. fold_value_biases leaves no mark, nor does fold_ln on a TransformerBridge
    (`enable_compatibility_mode` keeps its config's norm): they count as the others. None where no
    mark can show (no such weights, or a config where TransformerLens applies neither flag)."""
    cfg = getattr(model, "cfg", None)
    W_E, W_U = getattr(model, "W_E", None), getattr(model, "W_U", None)
    skipped = skipped_flags(cfg)
    if skipped is None or W_E is None or W_U is None or {"fold_ln", _CENTRED} <= skipped:
        return None
    from transformer_lens.model_bridge import TransformerBridge

    bridge = isinstance(model, TransformerBridge)
    marks = {_CENTRED: lambda: _centred(W_E), "center_unembed": lambda: _centred(W_U)}
    if not bridge:
        marks["fold_ln"] = lambda: str(cfg.normalization_type).endswith("Pre")
    applied = {flag: mark() for flag, mark in marks.items() if flag not in skipped}  # a skipped one shows nothing
    processed = any(applied.values())
    applied = {flag: applied.get(flag, processed) for flag in PROCESSING}
    name = str(getattr(cfg, "model_name", None) or "model")
    return ModelIdentity("object", name, weights="processed" if processed else "raw"), applied
